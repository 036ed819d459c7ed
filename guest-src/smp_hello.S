/*
 * smp_hello: 32-bit protected mode BSP that starts its AP the way an OS does, and the AP prints.
 *
 * The BSP prints "BSP", then writes the local APIC's ICR (xAPIC MMIO at 0xFEE00000) for the APIC ID
 * after its own (ACRN's vlapic_init gives each vLAPIC its pCPU's LAPIC ID, so the IDs follow the
 * VM's pCPUs, not 0..n-1): INIT, then two
 * SIPIs with vector AP_VECTOR (so the AP starts in real mode at CS:IP = AP_VECTOR<<8:0, the 4 KiB
 * page `ap_start`).  It waits for the AP's flag (bounded: "AP TIMEOUT" if it never comes), prints
 * "BSP saw AP" and halts with interrupts disabled, which ends the VM.
 *
 * The AP saves the EBX it starts with (the reset template's 0, or what SET_VCPU_REGS gave it: ACRN
 * keeps a never-run vCPU's registers through INIT, vlapic.c: vlapic_process_init_sipi), switches to protected mode
 * through the image's GDT, prints "AP RBX=0x<ebx>", sets the flag and waits in sti; hlt forever.
 */
	.include "macros.inc"
	.set	HEX_DIGITS, 8
	.set	CODE_DESC, 0x00CF9B000000FFFF
	.set	LAPIC, 0xFEE00000
	.set	LAPIC_ID, LAPIC + 0x20
	.set	ICR_LOW, LAPIC + 0x300
	.set	ICR_HIGH, LAPIC + 0x310
	.set	AP_STACK, 0x6000
	.set	WAIT_LOOPS, 0x1000000	/* generous: the AP thread may wait for a CPU on a loaded host */
	.code32
	.text
	.globl	start
start:
	PUTS	s_bsp
	movl	LAPIC_ID, %eax			/* own APIC ID in bits 31:24 */
	addl	$(1 << 24), %eax
	movl	%eax, ICR_HIGH			/* destination: the next APIC ID */
	movl	$0x00004500, ICR_LOW		/* INIT, level assert */
	movl	$(0x00004600 | AP_VECTOR), ICR_LOW	/* STARTUP */
	movl	$(0x00004600 | AP_VECTOR), ICR_LOW	/* the second SIPI of the MP protocol (ignored) */
	mov	$WAIT_LOOPS, %ecx
1:	cmpl	$1, ap_flag
	je	2f
	pause
	dec	%ecx
	jnz	1b
	PUTS	s_timeout
	HALT
2:	PUTS	s_saw
	HALT

	.include "uart.inc"
	.include "gdt.inc"
	.balign	8
gdt_ptr:
	.word	gdt_end - gdt - 1
	.long	gdt
ap_flag:	.long	0
ap_rbx:	.long	0
s_bsp:	.asciz	"BSP\n"
s_saw:	.asciz	"BSP saw AP\n"
s_timeout:	.asciz	"AP TIMEOUT\n"
s_ap:	.asciz	"AP RBX="

/* The AP's start page.  DS base 0 (ACRN gives every non-CS segment base 0) and the image is below
 * 64 KiB, so 16-bit addresses reach the variables. */
	.balign	4096
ap_start:
	.code16
	mov	%ebx, ap_rbx
	lgdtl	gdt_ptr
	mov	%cr0, %eax
	or	$1, %eax
	mov	%eax, %cr0
	ljmpl	$0x10, $ap32
	.code32
ap32:
	mov	$0x18, %ax
	mov	%ax, %ds
	mov	%ax, %es
	mov	%ax, %ss
	mov	$AP_STACK, %esp
	mov	ap_rbx, %ecx
	KV	s_ap
	movl	$1, ap_flag
3:	sti
	hlt
	jmp	3b

	.set	AP_VECTOR, (0x8000 + (ap_start - start)) >> 12
