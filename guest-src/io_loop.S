/*
 * io_loop: 32-bit protected mode; ECX OUT instructions of one byte (the low byte of the counter)
 * to port DX (both from the register state; 0x80 by default), then halts.  One exit per OUT:
 * the exit-cost benchmark.
 */
	.code32
	.text
	.globl	start
start:
	jecxz	2f
1:	mov	%cl, %al
	outb	%al, %dx
	dec	%ecx
	jnz	1b
2:	cli
3:	hlt
	jmp	3b
	.set	CODE_DESC, 0x00CF9B000000FFFF
	.include "gdt.inc"
