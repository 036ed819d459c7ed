/*
 * pci_probe: 32-bit protected mode; probes PCI configuration space through the 0xCF8/0xCFC
 * mechanism and writes every value it reads, as a dword, to the report port 0xE0.  In order:
 *   1. dword at 00:00.0 reg 0x00 (vendor | device << 16 of the host bridge)
 *   2. dword at 00:00.0 reg 0x08 (class code and revision)
 *   3. word at port 0xCFE with 00:00.0 reg 0x00 selected (the device ID: reg 0x02)
 *   4. dword at 00:01.0 reg 0x00 (no device there: all-ones)
 *   5. 0xCF8 read back after writing 0x00001234 (enable bit clear; the kernel keeps the address)
 *   6. dword at 0xCFC with the enable bit clear (the kernel answers 0xFFFFFFFF)
 *   7. command register after a word write of 0xFFFF to 00:00.0 reg 0x04
 *   8. the same dword after a dword write of 0 with the enable bit clear (dropped by the kernel)
 * then halts.  The HSM turns the data-port accesses into PCICFG requests (drivers/virt/acrn/ioreq.c: handle_cf8cfc).
 */
	.set	CONF_ADDR, 0xCF8
	.set	CONF_DATA, 0xCFC
	.set	REPORT, 0xE0
	.set	ENABLE, 0x80000000

	.macro	SELECT addr
	mov	$CONF_ADDR, %dx
	mov	$\addr, %eax
	outl	%eax, %dx
	.endm

	.macro	READ32 port=CONF_DATA
	mov	$\port, %dx
	inl	%dx, %eax
	outl	%eax, $REPORT
	.endm

	.code32
	.text
	.globl	start
start:
	SELECT	ENABLE | 0x00
	READ32
	SELECT	ENABLE | 0x08
	READ32
	SELECT	ENABLE | 0x00
	mov	$CONF_DATA + 2, %dx
	xor	%eax, %eax
	inw	%dx, %ax
	outl	%eax, $REPORT
	SELECT	ENABLE | (1 << 11)
	READ32
	SELECT	0x00001234
	READ32	CONF_ADDR
	READ32
	SELECT	ENABLE | 0x04
	mov	$CONF_DATA, %dx
	mov	$0xFFFF, %ax
	outw	%ax, %dx
	READ32
	SELECT	0x04
	mov	$CONF_DATA, %dx
	xor	%eax, %eax
	outl	%eax, %dx
	SELECT	ENABLE | 0x04
	READ32
	cli
1:	hlt
	jmp	1b
	.set	CODE_DESC, 0x00CF9B000000FFFF
	.include "gdt.inc"
