/*
 * A device model that holds a running VM until its stdin closes.
 *
 * usage: holder NAME [busy]
 * Prints "pid P" and then "vmid V" once the VM runs (or "create -1/ERRNO" and exits 1), then
 * serves the guest's I/O.  The guest halts (idle), or with "busy" writes to port 0x1238 without
 * end; after the first 100 writes the client prints "running".  At EOF on stdin a thread pauses
 * the VM and destroys the ioreq client (ATTACH returns ENODEV), and the VM is destroyed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/acrn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>


static struct acrn_io_request_buffer io_page __attribute__((aligned(4096)));
static int fd;

extern const unsigned char busy_guest[], busy_guest_end[], idle_guest[], idle_guest_end[];
__asm__(".pushsection .rodata\n"
	".hidden busy_guest, busy_guest_end, idle_guest, idle_guest_end\n"
	".code16\n"
	"busy_guest:\n"
	"mov $0x1238, %dx\n"
	"xor %ax, %ax\n"
	"1: out %al, %dx\n"
	"inc %ax\n"
	"jmp 1b\n"
	"busy_guest_end:\n"
	"idle_guest:\n"
	"2: hlt\n"
	"jmp 2b\n"
	"idle_guest_end:\n"
	".code64\n"
	".popsection\n");

#define CHECK(call)                                                                                       \
	do {                                                                                              \
		if ((call) < 0) {                                                                         \
			printf("%s -1/%s\n", #call, strerrorname_np(errno) ?: "?");                       \
			exit(1);                                                                          \
		}                                                                                         \
	} while (0)

#include "vm_setup.h"

static void *stdin_watch(void *unused)
{
	(void)unused;
	char buf[64];
	while (read(0, buf, sizeof(buf)) > 0)
		;
	ioctl(fd, ACRN_IOCTL_PAUSE_VM, 0);
	ioctl(fd, ACRN_IOCTL_DESTROY_IOREQ_CLIENT, 0);
	return NULL;
}

int main(int argc, char **argv)
{
	if (argc < 2)
		return 2;
	int busy = argc > 2 && strcmp(argv[2], "busy") == 0;
	setvbuf(stdout, NULL, _IOLBF, 0);
	printf("pid %d\n", getpid());
	fd = open("/dev/acrn_hsm", O_RDWR | O_CLOEXEC);
	if (fd < 0) {
		perror("open /dev/acrn_hsm");
		return 1;
	}
	struct acrn_vm_creation vm = {0};
	strncpy((char *)&vm.uuid, argv[1], sizeof(vm.uuid) - 1);
	vm.ioreq_buf = (__u64)(unsigned long)&io_page;
	if (ioctl(fd, ACRN_IOCTL_CREATE_VM, &vm) < 0) {
		printf("create -1/%s\n", strerrorname_np(errno) ?: "?");
		return 1;
	}
	size_t len = 0x10000;
	unsigned char *ram = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (ram == MAP_FAILED)
		return 1;
	if (busy)
		memcpy(ram, busy_guest, (size_t)(busy_guest_end - busy_guest));
	else
		memcpy(ram, idle_guest, (size_t)(idle_guest_end - idle_guest));
	CHECK(map_guest_ram(fd, ram, len));
	CHECK(set_real_mode_bsp(fd));
	CHECK(ioctl(fd, ACRN_IOCTL_CREATE_IOREQ_CLIENT, 0));
	/* an interrupt monitor page, an irqfd and an ioeventfd too: the release must drop them */
	CHECK(ioctl(fd, ACRN_IOCTL_VM_INTR_MONITOR, (unsigned long)ram + 0x8000));
	struct acrn_irqfd irq = {0};
	irq.fd = eventfd(0, EFD_CLOEXEC);
	irq.msi.msi_addr = 0xFEE00000;
	irq.msi.msi_data = 0x30;
	CHECK(ioctl(fd, ACRN_IOCTL_IRQFD, &irq));
	struct acrn_ioeventfd ioe = {0};
	ioe.fd = eventfd(0, EFD_CLOEXEC);
	ioe.flags = ACRN_IOEVENTFD_FLAG_PIO;
	ioe.addr = 0x600;
	ioe.len = 4;
	CHECK(ioctl(fd, ACRN_IOCTL_IOEVENTFD, &ioe));
	CHECK(ioctl(fd, ACRN_IOCTL_START_VM, 0));
	printf("vmid %u\n", vm.vmid);
	pthread_t t;
	pthread_create(&t, NULL, stdin_watch, NULL);
	unsigned long writes = 0;
	for (;;) {
		if (ioctl(fd, ACRN_IOCTL_ATTACH_IOREQ_CLIENT, 0) < 0)
			break; /* ENODEV: stdin closed */
		for (unsigned i = 0; i < vm.vcpu_num; i++) {
			struct acrn_io_request *req = &io_page.req_slot[i];
			if (__atomic_load_n(&req->processed, __ATOMIC_ACQUIRE) != ACRN_IOREQ_STATE_PROCESSING ||
			    req->kernel_handled)
				continue;
			if (++writes == 100)
				printf("running\n");
			struct acrn_ioreq_notify n = {vm.vmid, 0, i};
			if (ioctl(fd, ACRN_IOCTL_NOTIFY_REQUEST_FINISH, &n) < 0)
				break;
		}
	}
	pthread_join(t, NULL);
	CHECK(ioctl(fd, ACRN_IOCTL_DESTROY_VM, 0));
	close(fd);
	printf("done\n");
	return 0;
}
