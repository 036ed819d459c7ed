/* spin: 32-bit protected mode, an endless `jmp .` that never exits on its own (for kick/PAUSE tests). */
	.code32
	.text
	.globl	start
start:
	jmp	start
	.set	CODE_DESC, 0x00CF9B000000FFFF
	.include "gdt.inc"
