/*
 * hello_protected: 32-bit protected mode entered the acrn-dm way (CR0 0x31, CS 0x10 AR 0xC09B,
 * DS/SS/ES 0x18, GDTR -> the GDT below); prints one line on COM1 and halts.
 */
	.include "macros.inc"
	.set	HEX_DIGITS, 8
	.set	CODE_DESC, 0x00CF9B000000FFFF
	.code32
	.text
	.globl	start
start:
	PUTS	msg
	HALT

	.include "uart.inc"
	.include "gdt.inc"
msg:	.asciz	"hello from protected mode\n"
