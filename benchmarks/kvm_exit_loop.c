/*
 * The C baseline of benchmarks/exits.py: run a flat 32-bit guest image on raw KVM and time its
 * port-I/O exits, as a minimal VMM would (KVM_RUN, read kvm_run, loop).  No irqchip, so the final
 * HLT exits to userspace.
 *
 * usage: kvm_exit_loop IMAGE LOAD_GPA ENTRY COUNT PORT
 * The guest is entered in protected mode with flat 4 GiB segments (CS 0x10, data 0x18) and
 * ECX = COUNT, EDX = PORT, as pyacrn's io_loop register state does.  Prints one line:
 *     exits=<n> seconds=<t>
 */
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define MEM_SIZE (2u << 20)

static void die(const char *what)
{
	perror(what);
	exit(2);
}

static void flat(struct kvm_segment *s, uint16_t sel, uint8_t type)
{
	memset(s, 0, sizeof(*s));
	s->base = 0;
	s->limit = 0xffffffff;
	s->selector = sel;
	s->type = type;
	s->present = 1;
	s->dpl = 0;
	s->db = 1;
	s->s = 1;
	s->g = 1;
}

int main(int argc, char **argv)
{
	if (argc != 6) {
		fprintf(stderr, "usage: %s IMAGE LOAD_GPA ENTRY COUNT PORT\n", argv[0]);
		return 2;
	}
	unsigned long load = strtoul(argv[2], NULL, 0), entry = strtoul(argv[3], NULL, 0);
	unsigned long count = strtoul(argv[4], NULL, 0), port = strtoul(argv[5], NULL, 0);

	int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (kvm < 0)
		die("/dev/kvm");
	int vm = ioctl(kvm, KVM_CREATE_VM, 0);
	if (vm < 0)
		die("KVM_CREATE_VM");
	uint8_t *mem = mmap(NULL, MEM_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED)
		die("mmap");
	FILE *f = fopen(argv[1], "rb");
	if (!f)
		die(argv[1]);
	size_t n = fread(mem + load, 1, MEM_SIZE - load, f);
	fclose(f);
	if (n == 0)
		die("empty image");
	struct kvm_userspace_memory_region region = {
		.slot = 0, .guest_phys_addr = 0, .memory_size = MEM_SIZE, .userspace_addr = (uint64_t)mem,
	};
	if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0)
		die("KVM_SET_USER_MEMORY_REGION");
	int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
	if (vcpu < 0)
		die("KVM_CREATE_VCPU");
	int run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
	struct kvm_run *run = mmap(NULL, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
	if (run == MAP_FAILED)
		die("mmap kvm_run");

	struct kvm_sregs sregs;
	if (ioctl(vcpu, KVM_GET_SREGS, &sregs) < 0)
		die("KVM_GET_SREGS");
	flat(&sregs.cs, 0x10, 11);
	flat(&sregs.ds, 0x18, 3);
	sregs.es = sregs.fs = sregs.gs = sregs.ss = sregs.ds;
	sregs.cr0 = 0x31; /* PE | ET | NE */
	if (ioctl(vcpu, KVM_SET_SREGS, &sregs) < 0)
		die("KVM_SET_SREGS");
	struct kvm_regs regs = { .rip = entry, .rflags = 2, .rcx = count, .rdx = port, .rsp = 0x7000 };
	if (ioctl(vcpu, KVM_SET_REGS, &regs) < 0)
		die("KVM_SET_REGS");

	struct timespec t0, t1;
	unsigned long exits = 0;
	volatile uint8_t sink = 0;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (;;) {
		if (ioctl(vcpu, KVM_RUN, 0) < 0)
			die("KVM_RUN");
		if (run->exit_reason == KVM_EXIT_IO) {
			sink ^= *((uint8_t *)run + run->io.data_offset); /* "handle" the write */
			exits++;
			continue;
		}
		if (run->exit_reason == KVM_EXIT_HLT)
			break;
		fprintf(stderr, "unexpected exit %u\n", run->exit_reason);
		return 1;
	}
	clock_gettime(CLOCK_MONOTONIC, &t1);
	printf("exits=%lu seconds=%.6f\n", exits, (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9);
	munmap(run, run_size);
	close(vcpu);
	close(vm);
	close(kvm);
	return 0;
}
