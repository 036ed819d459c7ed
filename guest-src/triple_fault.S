/*
 * triple_fault: 32-bit protected mode; loads an empty IDT (limit 0) and executes ud2.  #UD cannot
 * be delivered (#GP), nor can #GP (#DF), nor #DF: the processor shuts down (triple fault).  ud2
 * rather than int3 because this machine's PVM instruction emulator cannot execute int3.
 */
	.code32
	.text
	.globl	start
start:
	lidt	empty_idt
	ud2
	cli
1:	hlt
	jmp	1b

	.balign	8
empty_idt:
	.word	0
	.long	0
	.set	CODE_DESC, 0x00CF9B000000FFFF
	.include "gdt.inc"
