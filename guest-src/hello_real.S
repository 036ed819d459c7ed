/* hello_real: real mode (CR0 0x30), CS base 0, IP 0x8000; prints one line on COM1 and halts. */
	.include "macros.inc"
	.set	HEX_DIGITS, 8
	.code16
	.text
	.globl	start
start:
	PUTS	msg
	HALT

	.include "uart.inc"
msg:	.asciz	"hello from real mode\n"
