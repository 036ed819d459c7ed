/*
 * Threads and signals on one HSM fd, as a device model uses them.
 *
 * usage: threads MODE NAME
 *   multi         a thread loops in ATTACH_IOREQ_CLIENT and hands each request to a second
 *                 thread, which NOTIFYs it; while the first one is blocked in ATTACH (before
 *                 the VM starts), a third thread runs SET_IRQLINE, INJECT_MSI and NOTIFY on
 *                 the same fd, then START_VM.  The guest writes 0..COUNT-1 to port 0x1238 and
 *                 0xff to port 0x1239.
 *   plain         a thread blocked in ATTACH (no request ever comes) gets SIGUSR1, whose handler
 *                 does nothing: ATTACH returns 0 (drivers/virt/acrn/ioreq.c:
 *                 acrn_ioreq_client_wait ignores the result of the wait)
 *   plain-restart the same with SA_RESTART: ATTACH still returns 0 (it is not restarted)
 *   plain-inside  100 times: one SIGUSR1, sent once the thread is inside ATTACH (in the poll
 *                 of its system call, /proc/self/task/TID/syscall): it must return 0 each time
 *   ctrlc-self    acrn-dm's Ctrl-C: the thread blocked in ATTACH gets SIGALRM; the handler
 *                 does PAUSE_VM and DESTROY_IOREQ_CLIENT on the fd (from inside the blocked
 *                 call's thread); ATTACH returns 0 or ENODEV, the next one ENODEV
 *   ctrlc-other   the same with the signal delivered to the main thread
 * Lines printed: "KEY VALUE" results; the test compares them.  Exit 0 unless a step failed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/acrn.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>


static struct acrn_io_request_buffer io_page __attribute__((aligned(4096)));
static int fd;
static struct acrn_vm_creation vm;

#define COUNT 50

/* multi: read port 0x1234 (held by the client), then write 0..COUNT-1 to 0x1238, 0xff to 0x1239 */
extern const unsigned char io_guest[], io_guest_end[];
/* the signal modes: never any I/O */
extern const unsigned char idle_guest[], idle_guest_end[];
__asm__(".pushsection .rodata\n"
	".hidden io_guest, io_guest_end, idle_guest, idle_guest_end\n"
	"io_guest:\n"
	".code16\n"
	"mov $0x1234, %dx\n"
	"in %dx, %al\n"
	"xor %cx, %cx\n"
	"mov $0x1238, %dx\n"
	"2: mov %cx, %ax\n"
	"out %al, %dx\n"
	"inc %cx\n"
	"cmp $" "50" ", %cx\n"
	"jne 2b\n"
	"mov $0x1239, %dx\n"
	"mov $0xff, %al\n"
	"out %al, %dx\n"
	"1: hlt\n"
	"jmp 1b\n"
	"io_guest_end:\n"
	"idle_guest:\n"
	"3: hlt\n"
	"jmp 3b\n"
	"idle_guest_end:\n"
	".code64\n"
	".popsection\n");

#define FAIL(...)                                                                                         \
	do {                                                                                              \
		fprintf(stderr, __VA_ARGS__);                                                             \
		fprintf(stderr, ": %s\n", strerror(errno));                                               \
		exit(1);                                                                                  \
	} while (0)
#define CHECK(call)                                                                                       \
	do {                                                                                              \
		if ((call) < 0)                                                                           \
			FAIL("%s", #call);                                                                \
	} while (0)

#include "vm_setup.h"

static void setup(const char *name, const unsigned char *g, const unsigned char *g_end, int start)
{
	fd = open("/dev/acrn_hsm", O_RDWR | O_CLOEXEC);
	if (fd < 0)
		FAIL("open /dev/acrn_hsm");
	strncpy((char *)&vm.uuid, name, sizeof(vm.uuid) - 1);
	vm.ioreq_buf = (__u64)(unsigned long)&io_page;
	CHECK(ioctl(fd, ACRN_IOCTL_CREATE_VM, &vm));
	size_t len = 0x10000;
	unsigned char *ram = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (ram == MAP_FAILED)
		FAIL("mmap");
	memcpy(ram, g, (size_t)(g_end - g));
	CHECK(map_guest_ram(fd, ram, len));
	CHECK(set_real_mode_bsp(fd));
	CHECK(ioctl(fd, ACRN_IOCTL_CREATE_IOREQ_CLIENT, 0));
	if (start)
		CHECK(ioctl(fd, ACRN_IOCTL_START_VM, 0));
}

static void teardown(void)
{
	int p = ioctl(fd, ACRN_IOCTL_PAUSE_VM, 0);
	int d = ioctl(fd, ACRN_IOCTL_DESTROY_IOREQ_CLIENT, 0);
	int v = ioctl(fd, ACRN_IOCTL_DESTROY_VM, 0);
	printf("teardown %d %d %d\n", p, d, v);
	close(fd);
}

static void sleep_ms(int ms)
{
	struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

/* ------------------------------------------------------------------ multi */
static int to_notifier[2];
static int attach_calls; /* ATTACH calls the attacher has started */
static int in_attach;
static int handed[ACRN_IO_REQUEST_MAX]; /* given to the notifier, not yet notified */
static int seen[COUNT + 1];
static int nseen;

static void *attacher(void *unused)
{
	(void)unused;
	int done = 0;
	while (!done) {
		__atomic_add_fetch(&attach_calls, 1, __ATOMIC_SEQ_CST);
		__atomic_store_n(&in_attach, 1, __ATOMIC_SEQ_CST);
		int r = ioctl(fd, ACRN_IOCTL_ATTACH_IOREQ_CLIENT, 0);
		__atomic_store_n(&in_attach, 0, __ATOMIC_SEQ_CST);
		if (r < 0)
			FAIL("ATTACH");
		for (unsigned i = 0; i < vm.vcpu_num && i < ACRN_IO_REQUEST_MAX; i++) {
			struct acrn_io_request *req = &io_page.req_slot[i];
			if (__atomic_load_n(&handed[i], __ATOMIC_ACQUIRE) ||
			    __atomic_load_n(&req->processed, __ATOMIC_ACQUIRE) != ACRN_IOREQ_STATE_PROCESSING ||
			    req->kernel_handled || req->type != ACRN_IOREQ_TYPE_PORTIO)
				continue;
			struct acrn_pio_request *p = &req->reqs.pio_request;
			if (p->direction == ACRN_IOREQ_DIR_READ) {
				p->value = 0;
			} else if (p->address == 0x1238) {
				if (nseen < COUNT)
					seen[nseen++] = (int)(p->value & 0xFF);
			} else if (p->address == 0x1239) {
				done = 1;
			}
			/* The notifier completes it; until then ATTACH returns at once (the request is
			 * still pending for the client) and this loop skips the slot. */
			__atomic_store_n(&handed[i], 1, __ATOMIC_RELEASE);
			unsigned v = i;
			if (write(to_notifier[1], &v, sizeof(v)) != sizeof(v))
				FAIL("write");
		}
	}
	unsigned stop = ~0u;
	if (write(to_notifier[1], &stop, sizeof(stop)) != sizeof(stop))
		FAIL("write");
	return NULL;
}

static void *notifier(void *unused)
{
	(void)unused;
	int notified = 0;
	for (;;) {
		unsigned v;
		if (read(to_notifier[0], &v, sizeof(v)) != sizeof(v))
			FAIL("read");
		if (v == ~0u)
			break;
		struct acrn_ioreq_notify n = {vm.vmid, 0, v};
		CHECK(ioctl(fd, ACRN_IOCTL_NOTIFY_REQUEST_FINISH, &n));
		__atomic_store_n(&handed[v], 0, __ATOMIC_RELEASE);
		notified++;
	}
	printf("notifier notified=%d\n", notified);
	return NULL;
}

/* While the attacher is blocked in ATTACH (the VM has not started: no request can come),
 * SET_IRQLINE, INJECT_MSI and NOTIFY on the same fd; then START_VM. */
static void *others(void *unused)
{
	(void)unused;
	while (!__atomic_load_n(&in_attach, __ATOMIC_SEQ_CST))
		sleep_ms(1);
	sleep_ms(20); /* not needed for the result: only makes "inside the call" likely */
	int calls_before = __atomic_load_n(&attach_calls, __ATOMIC_SEQ_CST);
	int ok_irq = 0, ok_msi = 0, einval_notify = 0;
	for (int i = 0; i < 20; i++) {
		if (ioctl(fd, ACRN_IOCTL_SET_IRQLINE, (unsigned long)((2ULL << 32) | 4)) == 0)
			ok_irq++;
		struct acrn_msi_entry msi = {0xFEE00000, 0x40};
		if (ioctl(fd, ACRN_IOCTL_INJECT_MSI, &msi) == 0)
			ok_msi++;
		struct acrn_ioreq_notify n = {vm.vmid, 0, 200};
		if (ioctl(fd, ACRN_IOCTL_NOTIFY_REQUEST_FINISH, &n) < 0 && errno == EINVAL)
			einval_notify++;
	}
	int still = __atomic_load_n(&in_attach, __ATOMIC_SEQ_CST) &&
		    __atomic_load_n(&attach_calls, __ATOMIC_SEQ_CST) == calls_before;
	printf("others irqline=%d msi=%d notify_einval=%d attacher_blocked_throughout=%d\n", ok_irq, ok_msi,
	       einval_notify, still);
	CHECK(ioctl(fd, ACRN_IOCTL_START_VM, 0));
	return NULL;
}

static int multi(const char *name)
{
	setup(name, io_guest, io_guest_end, 0);
	if (pipe(to_notifier) < 0)
		FAIL("pipe");
	pthread_t a, n, o;
	pthread_create(&n, NULL, notifier, NULL);
	pthread_create(&a, NULL, attacher, NULL);
	pthread_create(&o, NULL, others, NULL);
	pthread_join(o, NULL);
	pthread_join(a, NULL);
	pthread_join(n, NULL);
	int in_order = nseen == COUNT;
	for (int i = 0; i < nseen; i++)
		in_order &= seen[i] == i;
	printf("guest writes=%d in_order=%d\n", nseen, in_order);
	teardown();
	return 0;
}

/* ------------------------------------------------------------------ signals */
static volatile sig_atomic_t handler_runs;
static volatile int h_pause = 99, h_destroy = 99, h_pause_errno, h_destroy_errno;
static int attach_done;
static pthread_t attach_thread;

static void noop_handler(int sig)
{
	(void)sig;
	handler_runs++;
}

/* acrn-dm's Ctrl-C: stop the VM and the ioreq client from the handler. */
static void ctrlc_handler(int sig)
{
	(void)sig;
	int e = errno;
	if (handler_runs++ == 0) {
		h_pause = ioctl(fd, ACRN_IOCTL_PAUSE_VM, 0);
		h_pause_errno = h_pause < 0 ? errno : 0;
		h_destroy = ioctl(fd, ACRN_IOCTL_DESTROY_IOREQ_CLIENT, 0);
		h_destroy_errno = h_destroy < 0 ? errno : 0;
	}
	errno = e;
}

static int first_ret = 99, first_errno, next_ret = 99, next_errno;
static pid_t attach_tid;

static void *blocked_attacher(void *unused)
{
	(void)unused;
	__atomic_store_n(&attach_tid, gettid(), __ATOMIC_SEQ_CST);
	__atomic_store_n(&in_attach, 1, __ATOMIC_SEQ_CST);
	first_ret = ioctl(fd, ACRN_IOCTL_ATTACH_IOREQ_CLIENT, 0);
	first_errno = first_ret < 0 ? errno : 0;
	__atomic_store_n(&attach_done, 1, __ATOMIC_SEQ_CST);
	return NULL;
}

/* Whether the thread is inside poll/ppoll (the wait of a forwarded ioctl). */
static int in_poll(pid_t tid)
{
	char path[64], buf[64];
	snprintf(path, sizeof(path), "/proc/self/task/%d/syscall", (int)tid);
	int f = open(path, O_RDONLY | O_CLOEXEC);
	if (f < 0)
		return 0;
	ssize_t n = read(f, buf, sizeof(buf) - 1);
	close(f);
	if (n <= 0)
		return 0;
	buf[n] = 0;
	long nr = strtol(buf, NULL, 10);
	return nr == 7 || nr == 271; /* x86-64 poll, ppoll */
}

/* One signal, once the thread waits inside ATTACH, many times over: none may be lost. */
static int inside(const char *name)
{
	struct sigaction sa = {0};
	sa.sa_handler = noop_handler;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGUSR1, &sa, NULL);
	setup(name, idle_guest, idle_guest_end, 1);
	for (int round = 0; round < 100; round++) {
		__atomic_store_n(&attach_tid, 0, __ATOMIC_SEQ_CST);
		__atomic_store_n(&attach_done, 0, __ATOMIC_SEQ_CST);
		pthread_create(&attach_thread, NULL, blocked_attacher, NULL);
		pid_t tid;
		while (!(tid = __atomic_load_n(&attach_tid, __ATOMIC_SEQ_CST)))
			sleep_ms(1);
		for (int i = 0; i < 30000 && !in_poll(tid); i++)
			usleep(100);
		pthread_kill(attach_thread, SIGUSR1);
		for (int i = 0; i < 1000 && !__atomic_load_n(&attach_done, __ATOMIC_SEQ_CST); i++)
			sleep_ms(10);
		if (!__atomic_load_n(&attach_done, __ATOMIC_SEQ_CST)) {
			printf("round %d: the signal was lost: ATTACH did not return\n", round);
			return 1;
		}
		pthread_join(attach_thread, NULL);
		if (first_ret != 0) {
			printf("round %d: ATTACH returned %d/%s\n", round, first_ret, strerrorname_np(first_errno) ?: "0");
			return 1;
		}
	}
	printf("100 signals, 100 returns\n");
	teardown();
	return 0;
}

static int signals(const char *mode, const char *name)
{
	int ctrlc = strncmp(mode, "ctrlc", 5) == 0;
	int sig = ctrlc ? SIGALRM : SIGUSR1;
	struct sigaction sa = {0};
	sa.sa_handler = ctrlc ? ctrlc_handler : noop_handler;
	sa.sa_flags = strcmp(mode, "plain-restart") == 0 ? SA_RESTART : 0;
	sigemptyset(&sa.sa_mask);
	sigaction(sig, &sa, NULL);
	setup(name, idle_guest, idle_guest_end, 1);
	/* In ctrlc-other the signal goes to this thread: the attacher blocks it. */
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, sig);
	if (strcmp(mode, "ctrlc-other") == 0)
		pthread_sigmask(SIG_BLOCK, &set, NULL);
	pthread_create(&attach_thread, NULL, blocked_attacher, NULL);
	if (strcmp(mode, "ctrlc-other") == 0)
		pthread_sigmask(SIG_UNBLOCK, &set, NULL);
	while (!__atomic_load_n(&in_attach, __ATOMIC_SEQ_CST))
		sleep_ms(1);
	/* The signal may land before the thread is inside the call: send it again until ATTACH
	 * returns (bounded: 30 s). */
	int sent = 0;
	for (int i = 0; i < 3000 && !__atomic_load_n(&attach_done, __ATOMIC_SEQ_CST); i++) {
		if (i % 20 == 0) {
			if (strcmp(mode, "ctrlc-other") == 0)
				raise(sig);
			else
				pthread_kill(attach_thread, sig);
			sent++;
		}
		sleep_ms(10);
	}
	if (!__atomic_load_n(&attach_done, __ATOMIC_SEQ_CST)) {
		printf("attach did not return\n");
		return 1;
	}
	pthread_join(attach_thread, NULL);
	if (ctrlc) {
		next_ret = ioctl(fd, ACRN_IOCTL_ATTACH_IOREQ_CLIENT, 0);
		next_errno = next_ret < 0 ? errno : 0;
		printf("handler pause=%d/%s destroy_client=%d/%s\n", h_pause, strerrorname_np(h_pause_errno) ?: "0",
		       h_destroy, strerrorname_np(h_destroy_errno) ?: "0");
		printf("attach first=%d/%s next=%d/%s\n", first_ret, strerrorname_np(first_errno) ?: "0", next_ret,
		       strerrorname_np(next_errno) ?: "0");
		/* paused by the handler: DESTROY_VM works without another PAUSE */
		int v = ioctl(fd, ACRN_IOCTL_DESTROY_VM, 0);
		printf("destroy_vm %d\n", v);
		close(fd);
	} else {
		printf("attach first=%d/%s handler_ran=%d\n", first_ret, strerrorname_np(first_errno) ?: "0",
		       handler_runs > 0);
		/* The fd still works after the interrupted call. */
		teardown();
	}
	(void)sent;
	return 0;
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc < 3) {
		fprintf(stderr, "usage: threads MODE NAME\n");
		return 2;
	}
	if (strcmp(argv[1], "multi") == 0)
		return multi(argv[2]);
	if (strcmp(argv[1], "plain-inside") == 0)
		return inside(argv[2]);
	return signals(argv[1], argv[2]);
}
