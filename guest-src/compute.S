/*
 * compute: 32-bit protected mode; adds ECX, ECX-1, ..., 1 (ECX from the register state) into EAX,
 * then prints COUNT=0x<n> and SUM=0x<n(n+1)/2 mod 2^32> and halts.  Two instructions per iteration
 * plus one add, for CPU-bound benchmarks.
 */
	.include "macros.inc"
	.set	HEX_DIGITS, 8
	.set	CODE_DESC, 0x00CF9B000000FFFF
	.code32
	.text
	.globl	start
start:
	mov	%ecx, %ebp
	xor	%eax, %eax
	jecxz	2f
1:	add	%ecx, %eax
	dec	%ecx
	jnz	1b
2:	push	%eax				/* the printing helpers clobber EAX */
	mov	%ebp, %ecx
	KV	s_count
	pop	%ecx
	KV	s_sum
	HALT

	.include "uart.inc"
	.include "gdt.inc"
s_count:	.asciz	"COUNT="
s_sum:		.asciz	"SUM="
