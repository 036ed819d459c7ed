/*
 * A table-driven HSM client: runs a script of ioctls on /dev/acrn_hsm and prints what each
 * returned, so that a test can compare it with the same script run on pyacrn's emulated HSM
 * in-process (tests/service/ioctl_script.py writes the scripts and runs that other side).
 *
 * The ioctl numbers are the ACRN_IOCTL_* macros of the system's <linux/acrn.h>, looked up by
 * name, so the script also proves that the header and pyacrn's acrn.uapi agree.
 *
 * Script, one step a line (numbers in C syntax: 0x.. or decimal):
 *   open [cloexec]             a new fd of /dev/acrn_hsm; it becomes the current one
 *   close                      close the current fd
 *   mem NAME PAGES             PAGES zeroed private read-write pages
 *   protect REF PROT           PROT: rw, ro or none (mprotect from REF to the region's end)
 *   put NAME OFF HEX           bytes into the region
 *   addr NAME OFF REF          the 8-byte address REF (NAME2+OFF2) into the region
 *   fdnum NAME OFF FD          the 4-byte number of the fd named FD into the region
 *   eventfd FD | pipe FD | badfd FD    an eventfd, a pipe's read end, a number that is not open
 *   ioctl LABEL CMD ARG OUT    CMD: a name (CREATE_VM) or a number; ARG: REF (a pointer) or
 *                              v:NUMBER (a value); OUT: bytes to print at REF afterwards
 * Output, one line per ioctl: LABEL RET ERRNO-NAME HEX-OUT ("-" when empty).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/acrn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#define PAGE 4096UL

#define C(name) {#name, ACRN_IOCTL_##name}
static const struct {
	const char *name;
	unsigned long cmd;
} cmds[] = {
	C(CREATE_VM),         C(DESTROY_VM),          C(START_VM),
	C(PAUSE_VM),          C(RESET_VM),            C(SET_VCPU_REGS),
	C(INJECT_MSI),        C(VM_INTR_MONITOR),     C(SET_IRQLINE),
	C(NOTIFY_REQUEST_FINISH), C(CREATE_IOREQ_CLIENT), C(ATTACH_IOREQ_CLIENT),
	C(DESTROY_IOREQ_CLIENT), C(CLEAR_VM_IOREQ),   C(SET_MEMSEG),
	C(UNSET_MEMSEG),      C(SET_PTDEV_INTR),      C(RESET_PTDEV_INTR),
	C(ASSIGN_PCIDEV),     C(DEASSIGN_PCIDEV),     C(ASSIGN_MMIODEV),
	C(DEASSIGN_MMIODEV),  C(CREATE_VDEV),         C(DESTROY_VDEV),
	C(PM_GET_CPU_STATE),  C(IOEVENTFD),           C(IRQFD),
};

#define MAXN 64
static struct {
	char name[32];
	unsigned char *base;
	size_t len;
} mems[MAXN];
static int nmems;
static struct {
	char name[32];
	int fd;
} fds[MAXN];
static int nfds;
static int cur = -1;

static void die(int line, const char *what)
{
	fprintf(stderr, "ioctl_table: script line %d: %s\n", line, what);
	exit(2);
}

static int find_mem(const char *name)
{
	for (int i = 0; i < nmems; i++)
		if (strcmp(mems[i].name, name) == 0)
			return i;
	return -1;
}

static int find_fd(const char *name)
{
	for (int i = 0; i < nfds; i++)
		if (strcmp(fds[i].name, name) == 0)
			return fds[i].fd;
	return -1;
}

/* NAME+OFF -> address. */
static uintptr_t ref(int line, const char *s)
{
	char name[32];
	const char *plus = strchr(s, '+');
	size_t n = plus ? (size_t)(plus - s) : strlen(s);
	if (n >= sizeof(name))
		die(line, "name too long");
	memcpy(name, s, n);
	name[n] = 0;
	int m = find_mem(name);
	if (m < 0)
		die(line, "unknown region");
	return (uintptr_t)mems[m].base + (plus ? strtoull(plus + 1, NULL, 0) : 0);
}

static unsigned long cmd_of(int line, const char *s)
{
	for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++)
		if (strcmp(cmds[i].name, s) == 0)
			return cmds[i].cmd;
	if (s[0] >= '0' && s[0] <= '9')
		return strtoul(s, NULL, 0);
	die(line, "unknown ioctl");
	return 0;
}

static void add_fd(int line, const char *name, int fd)
{
	if (nfds >= MAXN || strlen(name) >= sizeof(fds[0].name))
		die(line, "too many fds");
	strcpy(fds[nfds].name, name);
	fds[nfds++].fd = fd;
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: ioctl_table SCRIPT\n");
		return 2;
	}
	FILE *f = fopen(argv[1], "r");
	if (!f) {
		perror(argv[1]);
		return 2;
	}
	char buf[8192];
	int line = 0;
	setvbuf(stdout, NULL, _IOLBF, 0);
	while (fgets(buf, sizeof(buf), f)) {
		line++;
		char *tok[8] = {0};
		int nt = 0;
		for (char *p = strtok(buf, " \t\n"); p && nt < 8; p = strtok(NULL, " \t\n"))
			tok[nt++] = p;
		if (nt == 0 || tok[0][0] == '#')
			continue;
		const char *op = tok[0];
		if (strcmp(op, "open") == 0) {
			int flags = O_RDWR | (nt > 1 && strcmp(tok[1], "cloexec") == 0 ? O_CLOEXEC : 0);
			cur = open("/dev/acrn_hsm", flags);
			if (cur < 0) {
				perror("open /dev/acrn_hsm");
				return 1;
			}
		} else if (strcmp(op, "close") == 0) {
			close(cur);
			cur = -1;
		} else if (strcmp(op, "mem") == 0 && nt == 3) {
			if (nmems >= MAXN || strlen(tok[1]) >= sizeof(mems[0].name))
				die(line, "too many regions");
			size_t len = strtoul(tok[2], NULL, 0) * PAGE;
			void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
			if (p == MAP_FAILED)
				die(line, "mmap");
			strcpy(mems[nmems].name, tok[1]);
			mems[nmems].base = p;
			mems[nmems++].len = len;
		} else if (strcmp(op, "protect") == 0 && nt == 3) {
			uintptr_t a = ref(line, tok[1]);
			char name[32];
			snprintf(name, sizeof(name), "%.*s", (int)strcspn(tok[1], "+"), tok[1]);
			int m = find_mem(name);
			int prot = strcmp(tok[2], "rw") == 0   ? PROT_READ | PROT_WRITE
				   : strcmp(tok[2], "ro") == 0 ? PROT_READ
							       : PROT_NONE;
			if (mprotect((void *)a, (size_t)((uintptr_t)mems[m].base + mems[m].len - a), prot) < 0)
				die(line, "mprotect");
		} else if (strcmp(op, "put") == 0 && nt == 4) {
			unsigned char *p = (unsigned char *)ref(line, tok[1]) + strtoul(tok[2], NULL, 0);
			for (const char *h = tok[3]; h[0] && h[1]; h += 2) {
				unsigned v;
				sscanf(h, "%2x", &v);
				*p++ = (unsigned char)v;
			}
		} else if (strcmp(op, "addr") == 0 && nt == 4) {
			uint64_t a = ref(line, tok[3]);
			memcpy((char *)ref(line, tok[1]) + strtoul(tok[2], NULL, 0), &a, 8);
		} else if (strcmp(op, "fdnum") == 0 && nt == 4) {
			int32_t v = find_fd(tok[3]);
			memcpy((char *)ref(line, tok[1]) + strtoul(tok[2], NULL, 0), &v, 4);
		} else if (strcmp(op, "eventfd") == 0 && nt == 2) {
			add_fd(line, tok[1], eventfd(0, EFD_CLOEXEC));
		} else if (strcmp(op, "pipe") == 0 && nt == 2) {
			int p[2];
			if (pipe2(p, O_CLOEXEC) < 0)
				die(line, "pipe");
			add_fd(line, tok[1], p[0]);
		} else if (strcmp(op, "badfd") == 0 && nt == 2) {
			int n = 900;
			while (fcntl(n, F_GETFD) >= 0)
				n++;
			add_fd(line, tok[1], n);
		} else if (strcmp(op, "ioctl") == 0 && nt == 5) {
			unsigned long cmd = cmd_of(line, tok[2]);
			unsigned long arg;
			int is_ptr = strncmp(tok[3], "v:", 2) != 0;
			arg = is_ptr ? ref(line, tok[3]) : strtoul(tok[3] + 2, NULL, 0);
			size_t out = strtoul(tok[4], NULL, 0);
			errno = 0;
			int r = ioctl(cur, cmd, arg);
			int e = r < 0 ? errno : 0;
			printf("%s %d %s ", tok[1], r, e ? strerrorname_np(e) : "0");
			if (is_ptr && out) {
				for (size_t i = 0; i < out; i++)
					printf("%02x", ((unsigned char *)arg)[i]);
				printf("\n");
			} else {
				printf("-\n");
			}
		} else {
			die(line, "unknown step");
		}
	}
	return 0;
}
