/*
 * An ioreq loop as acrn-dm runs it: ATTACH_IOREQ_CLIENT, then scan every vCPU's slot of the
 * shared ioreq page for PROCESSING requests, emulate them, NOTIFY_REQUEST_FINISH.  The guest
 * (real mode) does port I/O, MMIO and PCI configuration accesses through CF8/CFC (which the
 * HSM turns into PCICFG requests) and writes each value it read to port 0x1238; the client
 * prints every request it handled, one a line:
 *   pio  r|w ADDR SIZE VALUE
 *   mmio r|w ADDR SIZE VALUE
 *   pci  r|w BB:DD.F REG SIZE VALUE
 * and exits 0 once the guest wrote to port 0x1239 (its last access).
 *
 * usage: ioreq_loop NAME
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/acrn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "vm_setup.h"

static struct acrn_io_request_buffer io_page __attribute__((aligned(4096)));

#define PIO_VALUE 0x12345678u
#define MMIO_BASE 0x20000u
#define MMIO_VALUE 0xCAFEBABEu
#define PCI_VALUE 0xABCD8086u

extern const unsigned char guest_start[], guest_end[];
__asm__(".pushsection .rodata\n"
	".globl guest_start\n"
	".hidden guest_start\n"
	"guest_start:\n"
	".code16\n"
	"xor %ax, %ax\n"
	"mov %ax, %ds\n"
	/* port I/O: read 4 bytes at 0x1234, write them to 0x1238 */
	"mov $0x1234, %dx\n"
	"in %dx, %eax\n"
	"mov $0x1238, %dx\n"
	"out %eax, %dx\n"
	/* a 1-byte port write */
	"mov $0x1236, %dx\n"
	"mov $0x5a, %al\n"
	"out %al, %dx\n"
	/* MMIO at 0x20000 (no RAM there): read 4 bytes, write them to the port, write 2 bytes */
	"mov $0x2000, %ax\n"
	"mov %ax, %es\n"
	"mov %es:0x0, %eax\n"
	"mov $0x1238, %dx\n"
	"out %eax, %dx\n"
	"movw $0xbeef, %es:0x8\n"
	/* PCI configuration: 00:03.0 register 0 (read), register 0x10 (write) */
	"mov $0xcf8, %dx\n"
	"mov $0x80001800, %eax\n"
	"out %eax, %dx\n"
	"mov $0xcfc, %dx\n"
	"in %dx, %eax\n"
	"mov $0x1238, %dx\n"
	"out %eax, %dx\n"
	"mov $0xcf8, %dx\n"
	"mov $0x80001810, %eax\n"
	"out %eax, %dx\n"
	"mov $0xcfc, %dx\n"
	"mov $0xfedc0000, %eax\n"
	"out %eax, %dx\n"
	/* the register CF8 itself is kept in the kernel: read it back and show it */
	"mov $0xcf8, %dx\n"
	"in %dx, %eax\n"
	"mov $0x1238, %dx\n"
	"out %eax, %dx\n"
	/* done */
	"mov $0x1239, %dx\n"
	"mov $0xff, %al\n"
	"out %al, %dx\n"
	"1: hlt\n"
	"jmp 1b\n"
	".code64\n"
	".globl guest_end\n"
	".hidden guest_end\n"
	"guest_end:\n"
	".popsection\n");

int main(int argc, char **argv)
{
	const char *name = argc > 1 ? argv[1] : "ioreq-loop";
	setvbuf(stdout, NULL, _IOLBF, 0);
	int fd = open("/dev/acrn_hsm", O_RDWR | O_CLOEXEC);
	if (fd < 0) {
		perror("open /dev/acrn_hsm");
		return 1;
	}
	struct acrn_vm_creation vm = {0};
	strncpy((char *)&vm.uuid, name, sizeof(vm.uuid) - 1);
	vm.ioreq_buf = (__u64)(unsigned long)&io_page;
	CHECK(ioctl(fd, ACRN_IOCTL_CREATE_VM, &vm));

	size_t ram_len = 0x10000;
	unsigned char *ram = mmap(NULL, ram_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (ram == MAP_FAILED)
		return 1;
	memcpy(ram, guest_start, (size_t)(guest_end - guest_start));
	CHECK(map_guest_ram(fd, ram, ram_len));

	CHECK(set_real_mode_bsp(fd));
	CHECK(ioctl(fd, ACRN_IOCTL_CREATE_IOREQ_CLIENT, 0));
	CHECK(ioctl(fd, ACRN_IOCTL_START_VM, 0));

	int done = 0;
	while (!done) {
		CHECK(ioctl(fd, ACRN_IOCTL_ATTACH_IOREQ_CLIENT, 0));
		for (unsigned i = 0; i < vm.vcpu_num; i++) {
			struct acrn_io_request *req = &io_page.req_slot[i];
			if (__atomic_load_n(&req->processed, __ATOMIC_ACQUIRE) != ACRN_IOREQ_STATE_PROCESSING ||
			    req->kernel_handled)
				continue;
			if (req->type == ACRN_IOREQ_TYPE_PORTIO) {
				struct acrn_pio_request *p = &req->reqs.pio_request;
				if (p->direction == ACRN_IOREQ_DIR_READ)
					p->value = p->address == 0x1234 ? PIO_VALUE : 0xFFFFFFFFu;
				printf("pio %c %#llx %llu %#x\n", p->direction == ACRN_IOREQ_DIR_READ ? 'r' : 'w',
				       (unsigned long long)p->address, (unsigned long long)p->size, p->value);
				if (p->address == 0x1239 && p->direction == ACRN_IOREQ_DIR_WRITE)
					done = 1;
			} else if (req->type == ACRN_IOREQ_TYPE_MMIO) {
				struct acrn_mmio_request *m = &req->reqs.mmio_request;
				if (m->direction == ACRN_IOREQ_DIR_READ)
					m->value = m->address == MMIO_BASE ? MMIO_VALUE : 0;
				printf("mmio %c %#llx %llu %#llx\n", m->direction == ACRN_IOREQ_DIR_READ ? 'r' : 'w',
				       (unsigned long long)m->address, (unsigned long long)m->size,
				       (unsigned long long)m->value);
			} else if (req->type == ACRN_IOREQ_TYPE_PCICFG) {
				struct acrn_pci_request *c = &req->reqs.pci_request;
				if (c->direction == ACRN_IOREQ_DIR_READ)
					c->value = c->dev == 3 && c->reg == 0 ? PCI_VALUE : 0xFFFFFFFFu;
				printf("pci %c %02x:%02x.%x %#x %lld %#x\n",
				       c->direction == ACRN_IOREQ_DIR_READ ? 'r' : 'w', c->bus, c->dev, c->func,
				       c->reg, (long long)c->size, c->value);
			} else {
				printf("type %u\n", req->type);
			}
			struct acrn_ioreq_notify n = {vm.vmid, 0, i};
			CHECK(ioctl(fd, ACRN_IOCTL_NOTIFY_REQUEST_FINISH, &n));
		}
	}
	CHECK(ioctl(fd, ACRN_IOCTL_PAUSE_VM, 0));
	CHECK(ioctl(fd, ACRN_IOCTL_DESTROY_IOREQ_CLIENT, 0));
	CHECK(ioctl(fd, ACRN_IOCTL_DESTROY_VM, 0));
	close(fd);
	printf("done\n");
	return 0;
}
