/*
 * ioevent_probe: 32-bit protected mode; the accesses a virtio driver makes to a queue-notify
 * register, on a port (DX) and at an MMIO address (ESI), for ioeventfd tests (drivers/virt/acrn/ioeventfd.c).
 * Every value read is zero-extended and written as a dword to the report port 0xE0.  In order:
 *   1. word read of port DX                  -> report
 *   2. word write of CX to port DX           (the matching kick)
 *   3. word write of BX to port DX           (another value)
 *   4. byte write of BL to port DX + 1       (inside a 2-byte range, not at its start)
 *   5. dword read at [ESI]                   -> report
 *   6. dword write of ECX to [ESI], then of EBX to [ESI]
 *   7. report 0x600D (done), then halt.
 */
	.set	REPORT, 0xE0

	.code32
	.text
	.globl	start
start:
	mov	$-1, %eax
	inw	%dx, %ax
	movzwl	%ax, %eax
	outl	%eax, $REPORT
	mov	%ecx, %eax
	outw	%ax, %dx
	mov	%ebx, %eax
	outw	%ax, %dx
	inc	%edx
	outb	%al, %dx
	dec	%edx
	movl	(%esi), %eax
	outl	%eax, $REPORT
	movl	%ecx, (%esi)
	movl	%ebx, (%esi)
	mov	$0x600D, %eax
	outl	%eax, $REPORT
	cli
1:	hlt
	jmp	1b
	.set	CODE_DESC, 0x00CF9B000000FFFF
	.include "gdt.inc"
