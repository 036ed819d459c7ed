/*
 * The C client of benchmarks/service_exits.py: an HSM client in the shape of acrn-dm's ioreq
 * loop (ATTACH_IOREQ_CLIENT, scan the slots, NOTIFY_REQUEST_FINISH), run under `acrn exec` so
 * that every ioctl goes through pyacrn's preload library and hypervisor service.
 *
 * usage: service_exit_client IMAGE LOAD_GPA REGS MEM_SIZE COUNT PORT
 * IMAGE is loaded at LOAD_GPA in MEM_SIZE bytes of RAM; REGS is a struct acrn_vcpu_regs (as
 * pyacrn's VcpuRegs.to_bytes writes it).  The guest is expected to write COUNT times to PORT.
 * Prints one line, the time from START_VM to the COUNT-th NOTIFY:
 *     exits=<n> seconds=<t>
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/acrn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

static struct acrn_io_request_buffer io_page __attribute__((aligned(4096)));

#define CHECK(call)                                                                                       \
	do {                                                                                              \
		if ((call) < 0) {                                                                         \
			fprintf(stderr, "%s: %s\n", #call, strerror(errno));                              \
			return 1;                                                                         \
		}                                                                                         \
	} while (0)

static int read_file(const char *path, void *buf, size_t max, size_t *len)
{
	FILE *f = fopen(path, "rb");
	if (!f) {
		perror(path);
		return -1;
	}
	*len = fread(buf, 1, max, f);
	fclose(f);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc != 7) {
		fprintf(stderr, "usage: %s IMAGE LOAD_GPA REGS MEM_SIZE COUNT PORT\n", argv[0]);
		return 2;
	}
	unsigned long load = strtoul(argv[2], NULL, 0), mem_size = strtoul(argv[4], NULL, 0);
	unsigned long count = strtoul(argv[5], NULL, 0), port = strtoul(argv[6], NULL, 0);
	void *ram;
	if (posix_memalign(&ram, 4096, mem_size))
		return 2;
	memset(ram, 0, mem_size);
	size_t len;
	if (read_file(argv[1], (char *)ram + load, mem_size - load, &len) < 0)
		return 2;
	struct acrn_vcpu_regs regs;
	memset(&regs, 0, sizeof(regs));
	if (read_file(argv[3], &regs, sizeof(regs), &len) < 0 || len != sizeof(regs)) {
		fprintf(stderr, "%s: not a struct acrn_vcpu_regs\n", argv[3]);
		return 2;
	}

	int fd = open("/dev/acrn_hsm", O_RDWR | O_CLOEXEC);
	if (fd < 0) {
		perror("open /dev/acrn_hsm");
		return 1;
	}
	struct acrn_vm_creation vm = {0};
	strncpy((char *)&vm.uuid, "svc-bench", sizeof(vm.uuid) - 1);
	vm.ioreq_buf = (__u64)(unsigned long)&io_page;
	CHECK(ioctl(fd, ACRN_IOCTL_CREATE_VM, &vm));
	struct acrn_vm_memmap mm = {0};
	mm.type = ACRN_MEMMAP_RAM;
	mm.vma_base = (__u64)(unsigned long)ram;
	mm.len = mem_size;
	mm.user_vm_pa = 0;
	mm.attr = ACRN_MEM_ACCESS_RWX;
	CHECK(ioctl(fd, ACRN_IOCTL_SET_MEMSEG, &mm));
	CHECK(ioctl(fd, ACRN_IOCTL_SET_VCPU_REGS, &regs));
	CHECK(ioctl(fd, ACRN_IOCTL_CREATE_IOREQ_CLIENT, 0));

	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	CHECK(ioctl(fd, ACRN_IOCTL_START_VM, 0));
	unsigned long seen = 0, other = 0;
	while (seen < count) {
		CHECK(ioctl(fd, ACRN_IOCTL_ATTACH_IOREQ_CLIENT, 0));
		for (unsigned i = 0; i < vm.vcpu_num; i++) {
			struct acrn_io_request *req = &io_page.req_slot[i];
			if (__atomic_load_n(&req->processed, __ATOMIC_ACQUIRE) != ACRN_IOREQ_STATE_PROCESSING ||
			    req->kernel_handled)
				continue;
			if (req->type == ACRN_IOREQ_TYPE_PORTIO && req->reqs.pio_request.address == port &&
			    req->reqs.pio_request.direction == ACRN_IOREQ_DIR_WRITE) {
				seen++;
			} else {
				other++;
				if (req->type == ACRN_IOREQ_TYPE_PORTIO &&
				    req->reqs.pio_request.direction == ACRN_IOREQ_DIR_READ)
					req->reqs.pio_request.value = 0xFFFFFFFF;
			}
			struct acrn_ioreq_notify n = {vm.vmid, 0, i};
			CHECK(ioctl(fd, ACRN_IOCTL_NOTIFY_REQUEST_FINISH, &n));
		}
	}
	clock_gettime(CLOCK_MONOTONIC, &t1);
	CHECK(ioctl(fd, ACRN_IOCTL_PAUSE_VM, 0));
	CHECK(ioctl(fd, ACRN_IOCTL_DESTROY_IOREQ_CLIENT, 0));
	CHECK(ioctl(fd, ACRN_IOCTL_DESTROY_VM, 0));
	close(fd);
	printf("exits=%lu other=%lu seconds=%.6f\n", seen, other,
	       (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9);
	return 0;
}
