/*
 * irq_count: 32-bit protected mode; counts the interrupts it receives and reports each one on COM1.
 *
 * Set-up: an IDT with one stub per vector (all 256); the 8259 pair remapped to vectors 0x20-0x2F with
 * only IRQ 0 and IRQ 3 unmasked; the local APIC software-enabled (SVR = 0x1FF); three IOAPIC pins
 * routed to the BSP (its own APIC ID, read from the local APIC, physical): pin 4 (COM1) -> 0x34 edge, pin 5 -> 0x35 edge, pin 6 ->
 * 0x36 level; COM1's IER = received-data interrupt.  Then it prints "READY" and waits in sti; hlt.
 *
 * Each interrupt prints one line "V=0x<vector> N=0x<total so far>" (RX=0x<byte> before it for COM1's
 * vector 0x34, whose handler reads RBR).  The level vector 0x36 reads port ACK_PORT (the "device
 * acknowledge" a test's device model answers, lowering the line or not) before its EOI.  Vectors
 * 0x20-0x2F get a PIC EOI, the others a local-APIC EOI.  Vector STOP_VECTOR prints
 * "TOTAL=0x<count>" and halts with interrupts disabled (the VM ends).  An exception prints
 * "EXC=0x<vector>" and halts.
 *
 * There is no iret: the PVM-backed /dev/kvm of the development machines cannot emulate it (the vCPU
 * stops with KVM_EXIT_INTERNAL_ERROR), so each handler jumps back to the sti; hlt loop instead.
 */
	.include "macros.inc"
	.set	HEX_DIGITS, 8
	.set	CODE_DESC, 0x00CF9B000000FFFF
	.set	LAPIC, 0xFEE00000
	.set	LAPIC_SVR, LAPIC + 0xF0
	.set	LAPIC_EOI, LAPIC + 0xB0
	.set	IOAPIC, 0xFEC00000
	.set	IOAPIC_WIN, IOAPIC + 0x10
	.set	ACK_PORT, 0x510
	.set	STOP_VECTOR, 0x3F
	.set	CODE_SEL, 0x10
	.set	STACK_TOP, 0x7000
	.code32
	.text
	.globl	start
start:
	/* IDT: entry i -> stubs + 16 * i, 32-bit interrupt gate (present, DPL 0). */
	mov	$idt, %edi
	mov	$stubs, %eax
	mov	$256, %ecx
1:	mov	%ax, (%edi)
	movw	$CODE_SEL, 2(%edi)
	movw	$0x8E00, 4(%edi)
	mov	%eax, %edx
	shr	$16, %edx
	mov	%dx, 6(%edi)
	add	$16, %eax
	add	$8, %edi
	dec	%ecx
	jnz	1b
	lidt	idt_ptr

	/* 8259s: ICW1 (edge, cascade, ICW4), ICW2 vector bases, ICW3 wiring, ICW4 8086 mode. */
	mov	$0x11, %al
	out	%al, $0x20
	out	%al, $0xA0
	mov	$0x20, %al
	out	%al, $0x21
	mov	$0x28, %al
	out	%al, $0xA1
	mov	$0x04, %al
	out	%al, $0x21
	mov	$0x02, %al
	out	%al, $0xA1
	mov	$0x01, %al
	out	%al, $0x21
	out	%al, $0xA1
	mov	$0xF6, %al			/* unmask IRQ 0 and IRQ 3 */
	out	%al, $0x21
	mov	$0xFF, %al
	out	%al, $0xA1

	/* Local APIC on (spurious vector 0xFF), IOAPIC redirection entries. */
	movl	$0x1FF, LAPIC_SVR
	mov	$4, %ecx
	mov	$0x34, %edx
	call	set_rte
	mov	$5, %ecx
	mov	$0x35, %edx
	call	set_rte
	mov	$6, %ecx
	mov	$0x8036, %edx			/* bit 15: level-triggered */
	call	set_rte

	/* COM1: received-data interrupt. */
	mov	$0x01, %al
	mov	$COM1 + 1, %dx
	out	%al, %dx

	PUTS	s_ready
wait:	mov	$STACK_TOP, %esp
2:	sti
	hlt
	jmp	2b

/* set_rte: IOAPIC pin ECX -> low dword EDX, destination: this CPU's APIC ID (the ID register keeps
 * it in bits 31:24, where the redirection entry's high dword wants it). */
set_rte:
	lea	0x10(,%ecx,2), %eax
	mov	%eax, IOAPIC
	mov	%edx, IOAPIC_WIN
	inc	%eax
	mov	%eax, IOAPIC
	mov	LAPIC + 0x20, %eax
	mov	%eax, IOAPIC_WIN
	ret

/* Every vector's stub pushes its number and joins `common`; 16 bytes each so that the IDT loop
 * can compute the addresses. */
	.balign	16
stubs:
	.set	vec, 0
	.rept	256
	.balign	16
	.byte	0x68				/* push imm32 */
	.long	vec
	jmp	common
	.set	vec, vec + 1
	.endr

/* Interrupts are enabled only in `wait`, so a handler never returns: it resets the stack and
 * goes back there.  (This machine's /dev/kvm cannot emulate iret; see the module comment.) */
common:
	pop	%ebp				/* the vector */
	cmp	$0x20, %ebp
	jb	exception
	incl	count
	cmp	$0x34, %ebp
	jne	3f
	mov	$COM1, %dx			/* COM1: take the byte (this lowers its interrupt line) */
	inb	%dx, %al
	movzbl	%al, %ecx
	KV	s_rx
3:	cmp	$0x36, %ebp
	jne	4f
	mov	$ACK_PORT, %dx			/* the level device's acknowledge */
	inb	%dx, %al
	/* EOI before printing: the interrupt is handled once the device is acknowledged. */
4:	cmp	$0x30, %ebp
	jae	5f
	mov	$0x20, %al			/* 8259 non-specific EOI (slave first for its vectors) */
	cmp	$0x28, %ebp
	jb	6f
	out	%al, $0xA0
6:	out	%al, $0x20
	jmp	7f
5:	movl	$0, LAPIC_EOI
7:	PUTS	s_v
	mov	%ebp, %ecx
	call	puthex
	PUTS	s_n
	mov	count, %ecx
	call	puthex
	mov	$'\n', %al
	call	putc
	cmp	$STOP_VECTOR, %ebp
	je	stop
	jmp	wait

stop:
	mov	count, %ecx
	KV	s_total
	HALT

exception:
	mov	%ebp, %ecx
	KV	s_exc
	HALT

	.include "uart.inc"
	.include "gdt.inc"
	.balign	8
idt_ptr:
	.word	256 * 8 - 1
	.long	idt
count:	.long	0
s_ready:	.asciz	"READY\n"
s_v:	.asciz	"V=0x"
s_n:	.asciz	" N=0x"
s_rx:	.asciz	"RX="
s_total:	.asciz	"TOTAL="
s_exc:	.asciz	"EXC="
	.balign	8
idt:
	.fill	256 * 8, 1, 0
