/*
 * A small HSM client in the shape of the kernel's samples/acrn/vm-sample.c: open, CREATE_VM,
 * SET_MEMSEG (1 MiB from posix_memalign), SET_VCPU_REGS (real mode), CREATE_IOREQ_CLIENT,
 * START_VM, then the ATTACH / scan / NOTIFY loop until the guest wrote `count` bytes to port
 * 0x3F8; then PAUSE, DESTROY_IOREQ_CLIENT, DESTROY_VM.  It prints what the guest wrote and
 * exits 0 if every step returned what ACRN returns.
 *
 * usage: sample NAME [COUNT]
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/acrn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "vm_setup.h"

/* The ioreq page: a static, page-aligned buffer in .bss, as acrn-dm's io_request_page. */
static struct acrn_io_request_buffer io_page __attribute__((aligned(4096)));

/* Real mode at CS base 0: print "Hi!\n" on port 0x3F8, then halt. */
static const unsigned char guest[] = {
	0xBA, 0xF8, 0x03,       /* mov dx, 0x3f8 */
	0xB0, 'H', 0xEE,        /* mov al, 'H'; out dx, al */
	0xB0, 'i', 0xEE,
	0xB0, '!', 0xEE,
	0xB0, '\n', 0xEE,
	0xF4,                   /* hlt */
	0xEB, 0xFD,             /* jmp hlt */
};

int main(int argc, char **argv)
{
	const char *name = argc > 1 ? argv[1] : "sample";
	int count = argc > 2 ? atoi(argv[2]) : 4;
	int fd = open("/dev/acrn_hsm", O_RDWR | O_CLOEXEC);
	if (fd < 0) {
		perror("open /dev/acrn_hsm");
		return 1;
	}
	struct acrn_vm_creation vm = {0};
	strncpy((char *)&vm.uuid, name, sizeof(vm.uuid) - 1);
	vm.ioreq_buf = (__u64)(unsigned long)&io_page;
	CHECK(ioctl(fd, ACRN_IOCTL_CREATE_VM, &vm));
	printf("vmid %u vcpus %u\n", vm.vmid, vm.vcpu_num);

	void *ram;
	if (posix_memalign(&ram, 4096, 1 << 20))
		return 1;
	memset(ram, 0, 1 << 20);
	memcpy(ram, guest, sizeof(guest));
	CHECK(map_guest_ram(fd, ram, 1 << 20));

	CHECK(set_real_mode_bsp(fd));
	CHECK(ioctl(fd, ACRN_IOCTL_CREATE_IOREQ_CLIENT, 0));
	CHECK(ioctl(fd, ACRN_IOCTL_START_VM, 0));

	int seen = 0;
	while (seen < count) {
		CHECK(ioctl(fd, ACRN_IOCTL_ATTACH_IOREQ_CLIENT, 0));
		for (unsigned i = 0; i < vm.vcpu_num; i++) {
			struct acrn_io_request *req = &io_page.req_slot[i];
			if (__atomic_load_n(&req->processed, __ATOMIC_ACQUIRE) != ACRN_IOREQ_STATE_PROCESSING ||
			    req->kernel_handled)
				continue;
			if (req->type == ACRN_IOREQ_TYPE_PORTIO && req->reqs.pio_request.address == 0x3F8 &&
			    req->reqs.pio_request.direction == ACRN_IOREQ_DIR_WRITE) {
				putchar((int)req->reqs.pio_request.value);
				seen++;
			} else if (req->reqs.pio_request.direction == ACRN_IOREQ_DIR_READ) {
				req->reqs.pio_request.value = 0xFFFFFFFF;
			}
			struct acrn_ioreq_notify n = {vm.vmid, 0, i};
			CHECK(ioctl(fd, ACRN_IOCTL_NOTIFY_REQUEST_FINISH, &n));
		}
	}
	fflush(stdout);
	CHECK(ioctl(fd, ACRN_IOCTL_PAUSE_VM, 0));
	CHECK(ioctl(fd, ACRN_IOCTL_DESTROY_IOREQ_CLIENT, 0));
	CHECK(ioctl(fd, ACRN_IOCTL_DESTROY_VM, 0));
	close(fd);
	printf("done\n");
	return 0;
}
