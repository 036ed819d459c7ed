/*
 * The set-up steps the C test clients share: guest RAM through SET_MEMSEG and vCPU 0's
 * real-mode entry through SET_VCPU_REGS.  Each returns what the ioctl returned (errno set).
 */
#ifndef VM_SETUP_H
#define VM_SETUP_H

#include <errno.h>
#include <linux/acrn.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>

/* In main(): a failing call prints itself and errno, and the client exits 1 (a client with a
 * CHECK of its own defines it before including this file). */
#ifndef CHECK
#define CHECK(call)                                                                                       \
	do {                                                                                              \
		if ((call) < 0) {                                                                         \
			fprintf(stderr, "%s: %s\n", #call, strerror(errno));                              \
			return 1;                                                                         \
		}                                                                                         \
	} while (0)
#endif

/* `len` bytes at `ram` become guest RAM at GPA 0, read/write/execute (ACRN_MEMMAP_RAM). */
static inline int map_guest_ram(int fd, void *ram, size_t len)
{
	struct acrn_vm_memmap mm = {0};
	mm.type = ACRN_MEMMAP_RAM;
	mm.vma_base = (__u64)(unsigned long)ram;
	mm.len = len;
	mm.attr = ACRN_MEM_ACCESS_RWX;
	return ioctl(fd, ACRN_IOCTL_SET_MEMSEG, &mm);
}

/* vCPU 0 in real mode at CS selector 0xF000 with base 0, IP 0: the kernel's vm-sample state. */
static inline int set_real_mode_bsp(int fd)
{
	struct acrn_vcpu_regs regs = {0};
	regs.vcpu_regs.cr0 = 0x30;
	regs.vcpu_regs.cs_ar = 0x9F;
	regs.vcpu_regs.cs_sel = 0xF000;
	regs.vcpu_regs.cs_limit = 0xFFFF;
	return ioctl(fd, ACRN_IOCTL_SET_VCPU_REGS, &regs);
}

#endif
