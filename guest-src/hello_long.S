/*
 * hello_long: 64-bit long mode entered directly through the register state (CR0 0x80000031,
 * CR4.PAE, EFER LME|LMA, CS AR 0xA09B with L=1, CR3 = pml4 below); prints one line and halts.
 */
	.include "macros.inc"
	.set	HEX_DIGITS, 16
	.set	CODE_DESC, 0x00AF9B000000FFFF
	.code64
	.text
	.globl	start
start:
	PUTS	msg
	HALT

	.include "uart.inc"
	.include "gdt.inc"
msg:	.asciz	"hello from long mode\n"
	.include "pagetables.inc"
