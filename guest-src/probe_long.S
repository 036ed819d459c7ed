/*
 * probe_long: 64-bit landing probe (values printed with 16 hex digits).  Segment limits are not
 * checked in 64-bit mode, so the DS:0x10000 read always prints DSLIMIT=ok.
 */
	.include "macros.inc"
	.include "probe.inc"
	.set	HEX_DIGITS, 16
	.set	CODE_DESC, 0x00AF9B000000FFFF
	.macro	PUSHF_POP_RCX
	pushfq
	popq	%rcx
	.endm
	.code64
	.text
	.globl	start
start:
	PROBE_BODY %rcx
	movb	0x10000, %al
	PUTS	s_dslimit_ok
	HALT

	.include "uart.inc"
	.include "gdt.inc"
	.include "probe_strings.inc"
	.include "pagetables.inc"
