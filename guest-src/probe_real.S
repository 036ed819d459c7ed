/*
 * probe_real: real-mode landing probe.  Prints CR0/CR3/CR4/EFER/RFLAGS, the six selectors and
 * GDTR/IDTR, then reads DS:0x10000 through a 32-bit address.  ACRN lands DS with limit 0xFFFF
 * when CR0.PE = 0 (vcpu.c: set_vcpu_regs), so the read raises #GP (vector 13; #SS 12 is hooked too);
 * the handlers installed in the real-mode IVT print DSLIMIT=fault.  A 4 GiB limit prints DSLIMIT=ok.
 */
	.include "macros.inc"
	.set	HEX_DIGITS, 8
	.macro	PUSHF_POP_RCX
	pushfl
	popl	%ecx
	.endm
	.include "probe.inc"
	.code16
	.text
	.globl	start
start:
	PROBE_BODY %ecx
	/* IVT entries 12 (#SS) and 13 (#GP): offset, then segment 0; the register state sets IDTR to 0/0x3FF. */
	movw	$on_fault, 12 * 4
	movw	$0, 12 * 4 + 2
	movw	$on_fault, 13 * 4
	movw	$0, 13 * 4 + 2
	mov	$0x10000, %ebx
	movb	(%ebx), %al			/* 0x67 prefix: a 32-bit effective address */
	PUTS	s_dslimit_ok
	HALT
on_fault:
	PUTS	s_dslimit_fault
	HALT

	.include "uart.inc"
	.include "probe_strings.inc"
