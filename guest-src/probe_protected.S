/*
 * probe_protected: 32-bit protected-mode landing probe (acrn-dm bzImage state).  Same lines as
 * probe_real; the DS:0x10000 read succeeds with the 4 GiB limit ACRN lands when CR0.PE = 1
 * (vcpu.c: set_vcpu_regs) and prints DSLIMIT=ok.  There is no IDT: a fault here is a triple fault.
 */
	.include "macros.inc"
	.include "probe.inc"
	.set	HEX_DIGITS, 8
	.set	CODE_DESC, 0x00CF9B000000FFFF
	.macro	PUSHF_POP_RCX
	pushfl
	popl	%ecx
	.endm
	.code32
	.text
	.globl	start
start:
	PROBE_BODY %ecx
	movb	0x10000, %al
	PUTS	s_dslimit_ok
	HALT

	.include "uart.inc"
	.include "gdt.inc"
	.include "probe_strings.inc"
