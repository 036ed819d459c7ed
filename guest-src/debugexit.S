/*
 * debugexit: 32-bit protected mode; writes AL (from the register state's RAX) to port 0xF4, the
 * acrn-dm --debugexit / QEMU isa-debug-exit port, which ends the VM with status (AL << 1) | 1.
 */
	.code32
	.text
	.globl	start
start:
	outb	%al, $0xF4
	cli
1:	hlt
	jmp	1b
	.set	CODE_DESC, 0x00CF9B000000FFFF
	.include "gdt.inc"
