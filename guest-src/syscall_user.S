/*
 * syscall_user: a minimal kernel/user split, to check how the host's KVM delivers SYSCALL from
 * user mode (and int3 in kernel mode), and that pyacrn's repair of it works (acrn.emu.accel.syscall_repair).
 *
 * The "kernel" (CPL 0, 64-bit) loads its own GDT in Linux's layout (kernel CS 0x10, SS 0x18, user
 * SS 0x2b, user CS 0x33; a TSS at 0x38 whose RSP0 is the exception stack), an IDT of 32 gates,
 * EFER.SCE, STAR, LSTAR, FMASK (Linux's 0x47700) and KERNEL_GS_BASE; executes int3 (its #BP
 * handler prints "#BP" and returns), then IRETQs to user mode.  The system call entry is reached
 * through an alias of the image at +2 MiB whose page is supervisor-only, as a kernel's text is, so
 * a SYSCALL that arrives with CPL 3 faults on its first fetch (#PF at LSTAR, CS 0x33).
 *
 * User mode executes SYSCALL twice (RAX 1 and 2); the entry SWAPGSes, prints the state it arrived
 * with (SYSCALL CS, SS, RAX, RCX, R11, RFLAGS, GSBASE) and SYSRETQs.  Then user mode reads a
 * supervisor-only page: the #PF handler prints FAULT VECTOR, ERR, RIP, CS and halts.  Any other
 * exception prints the same and halts.  Every exception gate starts with a 3-byte NOP, as Linux's
 * do (ASM_CLAC without SMAP).
 */
	.include "macros.inc"
	.set	HEX_DIGITS, 16
	.set	ALIAS, 0x200000		/* the supervisor-only alias of the image */
	.set	KERNEL_GS, 0x5000	/* what SWAPGS must bring in */
	/* WRMSR64 msr, value: write a 64-bit immediate (or address) to an MSR. */
	.macro	WRMSR64 msr, value
	mov	$\msr, %ecx
	mov	$\value, %rax
	mov	%rax, %rdx
	shr	$32, %rdx
	wrmsr
	.endm
	.code64
	.text
	.globl	start
start:
	lgdt	gdtr
	mov	$tss, %rax		/* TSS descriptor base, bits 0-31 */
	mov	%ax, gdt_tss + 2
	shr	$16, %rax
	mov	%al, gdt_tss + 4
	mov	%ah, gdt_tss + 7
	mov	$0x38, %ax
	ltr	%ax
	xor	%ecx, %ecx		/* 32 interrupt gates, 16 bytes each, to stubs + 16 * vector */
	mov	$idt, %rdi
	mov	$stubs, %rax
1:	mov	%ax, (%rdi)
	movw	$0x10, 2(%rdi)
	movw	$0x8E00, 4(%rdi)
	mov	%rax, %rbx
	shr	$16, %rbx
	mov	%bx, 6(%rdi)
	movq	$0, 8(%rdi)
	add	$16, %rdi
	add	$16, %rax
	inc	%ecx
	cmp	$32, %ecx
	jne	1b
	lidt	idtr
	mov	$0xC0000080, %ecx	/* EFER.SCE */
	rdmsr
	or	$1, %eax
	wrmsr
	WRMSR64	0xC0000081, 0x0023001000000000	/* STAR: SYSRET base 0x23, SYSCALL CS 0x10 */
	WRMSR64	0xC0000082, lstar
	WRMSR64	0xC0000084, 0x47700	/* FMASK: TF DF IF IOPL NT AC */
	WRMSR64	0xC0000102, KERNEL_GS
	int3
	PUTS	s_to_user
	pushq	$0x2b			/* to user mode: SS, RSP, RFLAGS, CS, RIP */
	pushq	$user_stack_top
	pushq	$0x202
	pushq	$0x33
	pushq	$user
	iretq

user:
	mov	$1, %eax
	syscall
	mov	$2, %eax
	syscall
	mov	ALIAS, %rax		/* supervisor-only: a genuine #PF from user mode */
1:	jmp	1b

	.balign	16
syscall_entry:
	.globl	lstar
	.set	lstar, syscall_entry + ALIAS	/* what LSTAR holds (exported to symbols.json) */
	swapgs
	mov	%rax, %r15
	mov	%rcx, %r13
	mov	%r11, %r14
	mov	%rsp, %r12
	mov	$kernel_stack_top, %rsp
	PUTS	s_syscall
	mov	%cs, %ecx
	KV	s_cs
	mov	%ss, %ecx
	KV	s_ss
	mov	%r15, %rcx
	KV	s_rax
	mov	%r13, %rcx
	KV	s_rcx
	mov	%r14, %rcx
	KV	s_r11
	pushfq
	pop	%rcx
	KV	s_rflags
	mov	$0xC0000101, %ecx	/* GS_BASE */
	rdmsr
	shl	$32, %rdx
	or	%rax, %rdx
	mov	%rdx, %rcx
	KV	s_gsbase
	mov	%r12, %rsp
	mov	%r13, %rcx
	mov	%r14, %r11
	swapgs
	sysretq

/* Exceptions: the stub pushed a zero error code when the CPU did not, then the vector. */
exception:
	cmpq	$3, (%rsp)
	je	breakpoint
	PUTS	s_fault
	mov	(%rsp), %rcx
	KV	s_vector
	mov	8(%rsp), %rcx
	KV	s_err
	mov	16(%rsp), %rcx
	KV	s_rip
	mov	24(%rsp), %rcx
	KV	s_cs
	HALT
breakpoint:
	PUTS	s_bp
	add	$16, %rsp
	iretq

	.balign	16
stubs:
	.irp	v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
	.balign	16
	nopl	(%rax)
	.if	(\v == 8) || (\v == 10) || (\v == 11) || (\v == 12) || (\v == 13) || (\v == 14) || (\v == 17)
	pushq	$\v
	.else
	pushq	$0
	pushq	$\v
	.endif
	jmp	exception
	.endr

	.include "uart.inc"
s_to_user: .asciz "USER\n"
s_syscall: .asciz "SYSCALL\n"
s_fault: .asciz	"FAULT\n"
s_bp:	.asciz	"#BP\n"
s_cs:	.asciz	"CS="
s_ss:	.asciz	"SS="
s_rax:	.asciz	"RAX="
s_rcx:	.asciz	"RCX="
s_r11:	.asciz	"R11="
s_rflags: .asciz "RFLAGS="
s_gsbase: .asciz "GSBASE="
s_vector: .asciz "VECTOR="
s_err:	.asciz	"ERR="
s_rip:	.asciz	"RIP="
	.balign	8
gdtr:	.word	gdt_end - gdt - 1
	.quad	gdt
idtr:	.word	32 * 16 - 1
	.quad	idt
	.balign	8
gdt:
	.quad	0
	.quad	0
	.quad	0x00AF9B000000FFFF	/* 0x10 kernel code, 64-bit */
	.quad	0x00CF93000000FFFF	/* 0x18 kernel data */
	.quad	0x00CFFB000000FFFF	/* 0x20 user code, 32-bit */
	.quad	0x00CFF3000000FFFF	/* 0x28 user data */
	.quad	0x00AFFB000000FFFF	/* 0x30 user code, 64-bit */
gdt_tss:
	.quad	0x0000890000000067	/* 0x38 64-bit TSS, base filled in at start */
	.quad	0
gdt_end:
	.balign	16
tss:
	.long	0
	.quad	exception_stack_top	/* RSP0 */
	.fill	0x68 - 12, 1, 0
	.balign	4096
idt:	.fill	32 * 16, 1, 0
	.balign	4096
	.fill	4096, 1, 0
kernel_stack_top:
	.fill	4096, 1, 0
exception_stack_top:
	.fill	4096, 1, 0
user_stack_top:
/* GVA 0-2 MiB: the image, user-accessible (U); 2-4 MiB: the same memory, supervisor-only; the rest
 * of the low 1 GiB identity-mapped with U. */
	.balign	4096
pml4:
	.quad	pdpt + 0x7
	.fill	511, 8, 0
pdpt:
	.quad	pd + 0x7
	.fill	511, 8, 0
pd:
	.quad	0x87
	.quad	0x83
	.set	i, 2
	.rept	510
	.quad	(i << 21) | 0x87
	.set	i, i + 1
	.endr
