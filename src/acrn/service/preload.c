/*
 * pyacrn's preload library: /dev/acrn_hsm for an unmodified, dynamically linked program,
 * served by the pyacrn hypervisor service ("acrn hv") over a Unix socket.
 *
 * `acrn exec` sets LD_PRELOAD to this library and ACRN_HV_SOCKET to the service's socket.
 * Then, for the program and its children:
 *   - stat/access/open of /dev/acrn_hsm succeed; the fd returned is a SOCK_SEQPACKET
 *     connection to the service, so dup, fork, O_CLOEXEC and close behave as for the
 *     kernel's file (the service releases the file when the last reference goes);
 *   - ioctls on that fd (those of type 0xA2 with their argument bytes) travel to the
 *     service; the result, errno and the bytes the kernel writes back return;
 *   - user addresses inside arguments are shared with the service, never copied: a shared
 *     mapping travels as its file (SCM_RIGHTS), private memory is first turned into a
 *     shared mapping in place (memfd, same address, same contents), as vhost-user shares
 *     guest memory;
 *   - eventfds named by IOEVENTFD/IRQFD travel as fds.
 * Everything else (other files, other ioctls) goes straight to libc.
 *
 * Each thread calls through a channel of its own (a socketpair registered with the
 * service), so a thread blocked in ATTACH_IOREQ_CLIENT blocks nobody else; a call made
 * from a signal handler while its thread is inside a call uses a one-off channel.  A
 * signal that interrupts ATTACH makes it return 0, as the kernel's does (the HSM ignores
 * the result of wait_event_interruptible: drivers/virt/acrn/ioreq.c:
 * acrn_ioreq_client_wait).  The wire format is protocol.h.
 *
 * Python loads the same library with ctypes (acrn.service.client) and calls
 * acrn_preload_open() and ioctl() directly: one client implementation for both.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#include "protocol.h"

#define EXPORT __attribute__((visibility("default")))
#define TLS __thread __attribute__((tls_model("initial-exec")))
#define PAGE 4096UL

/* ---------------------------------------------------------------- the ACRN ioctls */
/* Argument kinds of the 27 ioctls of <linux/acrn.h> (numbers checked against the header by
 * tests/service/test_service_python.py). */
enum argkind { A_NONE, A_VALUE, A_STRUCT, A_PM };
enum embedded { E_NONE, E_IOREQ_BUF, E_VMA_BASE, E_MONITOR, E_EVENTFD };

struct acrn_cmd {
	uint32_t cmd;
	uint8_t kind;
	uint8_t embedded;
	const char *name;
};

static const struct acrn_cmd acrn_cmds[] = {
	{0xC030A210u, A_STRUCT, E_IOREQ_BUF, "ACRN_IOCTL_CREATE_VM"},
	{0x0000A211u, A_NONE, E_NONE, "ACRN_IOCTL_DESTROY_VM"},
	{0x0000A212u, A_NONE, E_NONE, "ACRN_IOCTL_START_VM"},
	{0x0000A213u, A_NONE, E_NONE, "ACRN_IOCTL_PAUSE_VM"},
	{0x0000A215u, A_NONE, E_NONE, "ACRN_IOCTL_RESET_VM"},
	{0x4128A216u, A_STRUCT, E_NONE, "ACRN_IOCTL_SET_VCPU_REGS"},
	{0x4010A223u, A_STRUCT, E_NONE, "ACRN_IOCTL_INJECT_MSI"},
	{0x4008A224u, A_VALUE, E_MONITOR, "ACRN_IOCTL_VM_INTR_MONITOR"},
	{0x4008A225u, A_VALUE, E_NONE, "ACRN_IOCTL_SET_IRQLINE"},
	{0x4008A231u, A_STRUCT, E_NONE, "ACRN_IOCTL_NOTIFY_REQUEST_FINISH"},
	{0x0000A232u, A_NONE, E_NONE, "ACRN_IOCTL_CREATE_IOREQ_CLIENT"},
	{0x0000A233u, A_NONE, E_NONE, "ACRN_IOCTL_ATTACH_IOREQ_CLIENT"},
	{0x0000A234u, A_NONE, E_NONE, "ACRN_IOCTL_DESTROY_IOREQ_CLIENT"},
	{0x0000A235u, A_NONE, E_NONE, "ACRN_IOCTL_CLEAR_VM_IOREQ"},
	{0x4020A241u, A_STRUCT, E_VMA_BASE, "ACRN_IOCTL_SET_MEMSEG"},
	{0x4020A242u, A_STRUCT, E_NONE, "ACRN_IOCTL_UNSET_MEMSEG"},
	{0x4014A253u, A_STRUCT, E_NONE, "ACRN_IOCTL_SET_PTDEV_INTR"},
	{0x4014A254u, A_STRUCT, E_NONE, "ACRN_IOCTL_RESET_PTDEV_INTR"},
	{0x4024A255u, A_STRUCT, E_NONE, "ACRN_IOCTL_ASSIGN_PCIDEV"},
	{0x4024A256u, A_STRUCT, E_NONE, "ACRN_IOCTL_DEASSIGN_PCIDEV"},
	{0x4068A257u, A_STRUCT, E_NONE, "ACRN_IOCTL_ASSIGN_MMIODEV"},
	{0x4068A258u, A_STRUCT, E_NONE, "ACRN_IOCTL_DEASSIGN_MMIODEV"},
	{0x40C0A259u, A_STRUCT, E_NONE, "ACRN_IOCTL_CREATE_VDEV"},
	{0x40C0A25Au, A_STRUCT, E_NONE, "ACRN_IOCTL_DESTROY_VDEV"},
	{0xC008A260u, A_PM, E_NONE, "ACRN_IOCTL_PM_GET_CPU_STATE"},
	{0x4020A270u, A_STRUCT, E_EVENTFD, "ACRN_IOCTL_IOEVENTFD"},
	{0x4018A271u, A_STRUCT, E_EVENTFD, "ACRN_IOCTL_IRQFD"},
};
#define ATTACH_IOREQ_CLIENT 0x0000A233u
#define ACRN_MEMMAP_RAM 0
/* PM_GET_CPU_STATE writes up to sizeof(struct acrn_pstate_data) back through a pointer the
 * ioctl encodes as 8 bytes (drivers/virt/acrn/hsm.c: pmcmd_ioctl). */
#define PM_MAX_OUT 48

static const struct acrn_cmd *find_cmd(uint32_t cmd)
{
	for (size_t i = 0; i < sizeof(acrn_cmds) / sizeof(acrn_cmds[0]); i++)
		if (acrn_cmds[i].cmd == cmd)
			return &acrn_cmds[i];
	return NULL;
}

/* ---------------------------------------------------------------- libc entry points */
static int (*real_open)(const char *, int, ...);
static int (*real_open64)(const char *, int, ...);
static int (*real_openat)(int, const char *, int, ...);
static int (*real_openat64)(int, const char *, int, ...);
static int (*real_open_2)(const char *, int);
static int (*real_open64_2)(const char *, int);
static int (*real_openat_2)(int, const char *, int);
static int (*real_openat64_2)(int, const char *, int);
static int (*real_ioctl)(int, unsigned long, ...);
static int (*real_close)(int);
static int (*real_stat)(const char *, struct stat *);
static int (*real_lstat)(const char *, struct stat *);
static int (*real_stat64)(const char *, struct stat64 *);
static int (*real_lstat64)(const char *, struct stat64 *);
static int (*real_fstatat)(int, const char *, struct stat *, int);
static int (*real_fstatat64)(int, const char *, struct stat64 *, int);
static int (*real_xstat)(int, const char *, struct stat *);
static int (*real_lxstat)(int, const char *, struct stat *);
static int (*real_xstat64)(int, const char *, struct stat64 *);
static int (*real_lxstat64)(int, const char *, struct stat64 *);
static int (*real_fxstatat)(int, int, const char *, struct stat *, int);
static int (*real_fxstatat64)(int, int, const char *, struct stat64 *, int);
static int (*real_statx)(int, const char *, int, unsigned int, struct statx *);
static int (*real_access)(const char *, int);
static int (*real_faccessat)(int, const char *, int, int);
static int (*real_euidaccess)(const char *, int);

#define RESOLVE(var, name) (var = dlsym(RTLD_NEXT, name))

#define SUN_LEN_MAX sizeof(((struct sockaddr_un *)0)->sun_path)
#define MAX_SERVICES 64
/* The service /dev/acrn_hsm leads to ($ACRN_HV_SOCKET), and every other one a Python caller
 * opened with acrn_preload_open: an HSM fd is recognised by its peer being one of them. */
static char svc_paths[MAX_SERVICES][SUN_LEN_MAX];
static int nsvc;
static pthread_mutex_t svc_lock = PTHREAD_MUTEX_INITIALIZER;
#define svc_path svc_paths[0]
static char dev_path[256] = "/dev/acrn_hsm";
static int active;      /* a service socket is configured */
static int from_env;    /* ... by $ACRN_HV_SOCKET: /dev/acrn_hsm exists (acrn exec) */
static int trace;       /* ACRN_EXEC_TRACE: log forwarded ioctls on stderr */

__attribute__((constructor)) static void preload_init(void)
{
	RESOLVE(real_open, "open");
	RESOLVE(real_open64, "open64");
	RESOLVE(real_openat, "openat");
	RESOLVE(real_openat64, "openat64");
	RESOLVE(real_open_2, "__open_2");
	RESOLVE(real_open64_2, "__open64_2");
	RESOLVE(real_openat_2, "__openat_2");
	RESOLVE(real_openat64_2, "__openat64_2");
	RESOLVE(real_ioctl, "ioctl");
	RESOLVE(real_close, "close");
	RESOLVE(real_stat, "stat");
	RESOLVE(real_lstat, "lstat");
	RESOLVE(real_stat64, "stat64");
	RESOLVE(real_lstat64, "lstat64");
	RESOLVE(real_fstatat, "fstatat");
	RESOLVE(real_fstatat64, "fstatat64");
	RESOLVE(real_xstat, "__xstat");
	RESOLVE(real_lxstat, "__lxstat");
	RESOLVE(real_xstat64, "__xstat64");
	RESOLVE(real_lxstat64, "__lxstat64");
	RESOLVE(real_fxstatat, "__fxstatat");
	RESOLVE(real_fxstatat64, "__fxstatat64");
	RESOLVE(real_statx, "statx");
	RESOLVE(real_access, "access");
	RESOLVE(real_faccessat, "faccessat");
	RESOLVE(real_euidaccess, "euidaccess");
	const char *s = getenv("ACRN_HV_SOCKET");
	if (s && *s && strlen(s) < SUN_LEN_MAX && !nsvc) {
		strcpy(svc_paths[0], s);
		nsvc = 1;
		active = 1;
		from_env = 1;
	}
	const char *d = getenv("ACRN_HSM_PATH");
	if (d && *d && strlen(d) < sizeof(dev_path))
		strcpy(dev_path, d);
	const char *t = getenv("ACRN_EXEC_TRACE");
	trace = t && *t && strcmp(t, "0") != 0;
}

/* One line on stderr: what the library could not do (never silently wrong). */
static void say(const char *fmt, ...)
{
	char buf[512];
	int n = snprintf(buf, sizeof(buf), "acrn exec: ");
	va_list ap;
	va_start(ap, fmt);
	n += vsnprintf(buf + n, sizeof(buf) - (size_t)n - 1, fmt, ap);
	va_end(ap);
	if (n > (int)sizeof(buf) - 2)
		n = (int)sizeof(buf) - 2;
	buf[n++] = '\n';
	ssize_t w = write(2, buf, (size_t)n);
	(void)w;
}

/* ---------------------------------------------------------------- which fds are the HSM */
/* fd -> socket inode of an HSM connection (0: not known to be one).  Verified with fstat on
 * every use, so a number reused for another file is never mistaken for the HSM. */
#define MAX_TRACKED 4096
static unsigned long hsm_ino[MAX_TRACKED];

static int peer_is_service(int fd)
{
	struct sockaddr_un sa;
	socklen_t len = sizeof(sa);
	int type = 0;
	socklen_t tlen = sizeof(type);
	if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tlen) < 0 || type != SOCK_SEQPACKET)
		return 0;
	memset(&sa, 0, sizeof(sa));
	if (getpeername(fd, (struct sockaddr *)&sa, &len) < 0 || sa.sun_family != AF_UNIX)
		return 0;
	for (int i = 0; i < nsvc && i < MAX_SERVICES; i++)
		if (strncmp(sa.sun_path, svc_paths[i], sizeof(sa.sun_path)) == 0)
			return 1;
	return 0;
}

/* The socket inode if `fd` is an open HSM file, else 0.  An fd inherited across exec is
 * recognised by its peer: the service's socket. */
static unsigned long hsm_file(int fd)
{
	struct stat st;
	if (!active || fd < 0 || fstat(fd, &st) < 0 || !S_ISSOCK(st.st_mode))
		return 0;
	if (fd < MAX_TRACKED && hsm_ino[fd] == st.st_ino)
		return st.st_ino;
	if (!peer_is_service(fd))
		return 0;
	if (fd < MAX_TRACKED)
		hsm_ino[fd] = st.st_ino;
	return st.st_ino;
}

/* ---------------------------------------------------------------- socket helpers */
static ssize_t send_fds(int sock, const void *buf, size_t len, const int *fds, int nfds)
{
	struct iovec iov = {(void *)buf, len};
	union {
		char b[CMSG_SPACE(sizeof(int) * ACRN_SVC_MAX_FDS)];
		struct cmsghdr align;
	} u;
	struct msghdr msg = {0};
	msg.msg_iov = &iov;
	msg.msg_iovlen = 1;
	if (nfds > 0) {
		memset(&u, 0, sizeof(u));
		msg.msg_control = u.b;
		msg.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
		struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
		memcpy(CMSG_DATA(c), fds, sizeof(int) * (size_t)nfds);
	}
	ssize_t r;
	do
		r = sendmsg(sock, &msg, MSG_NOSIGNAL);
	while (r < 0 && errno == EINTR);
	return r;
}

static ssize_t recv_all(int sock, void *buf, size_t len)
{
	ssize_t r;
	do
		r = recv(sock, buf, len, 0);
	while (r < 0 && errno == EINTR);
	return r;
}

static int connect_service(const char *path, int cloexec)
{
	int s = socket(AF_UNIX, SOCK_SEQPACKET | (cloexec ? SOCK_CLOEXEC : 0), 0);
	if (s < 0)
		return -1;
	struct sockaddr_un sa;
	memset(&sa, 0, sizeof(sa));
	sa.sun_family = AF_UNIX;
	strncpy(sa.sun_path, path, sizeof(sa.sun_path) - 1);
	int r;
	do
		r = connect(s, (struct sockaddr *)&sa, sizeof(sa));
	while (r < 0 && errno == EINTR);
	if (r < 0) {
		int e = errno;
		real_close(s);
		errno = e;
		return -1;
	}
	return s;
}

/* open("/dev/acrn_hsm"): one connection = one open file. */
static int hsm_open(const char *path, int flags)
{
	int s = connect_service(path, flags & O_CLOEXEC);
	if (s < 0) {
		say("cannot reach the pyacrn hypervisor service at %s: %s (start it with `acrn hv`)", path,
		    strerror(errno));
		errno = ENOENT;
		return -1;
	}
	struct acrn_svc_hello h = {ACRN_SVC_HELLO_MAGIC, ACRN_SVC_VERSION, ACRN_SVC_OPEN, (uint32_t)getpid(), 0};
	struct acrn_svc_hello_reply rep;
	if (send_fds(s, &h, sizeof(h), NULL, 0) != (ssize_t)sizeof(h) ||
	    recv_all(s, &rep, sizeof(rep)) != (ssize_t)sizeof(rep) || rep.magic != ACRN_SVC_HELLO_MAGIC) {
		say("the service at %s did not answer the open of %s", path, dev_path);
		real_close(s);
		errno = EIO;
		return -1;
	}
	if (rep.status < 0) {
		real_close(s);
		errno = -rep.status;
		return -1;
	}
	struct stat st;
	if (s < MAX_TRACKED && fstat(s, &st) == 0)
		hsm_ino[s] = st.st_ino;
	return s;
}

/* ---------------------------------------------------------------- channels */
struct channel {
	unsigned long ino; /* the HSM file (main socket inode) it belongs to; 0: free */
	int fd;
	uint32_t id;
	pid_t pid;         /* a channel inherited through fork belongs to the parent */
	int busy;
	uint64_t seq;
	unsigned long used;
};
#define NCHAN 4
static TLS struct channel chans[NCHAN];
static TLS unsigned long chan_clock;
static pthread_key_t chan_key;
static pthread_once_t chan_once = PTHREAD_ONCE_INIT;

static void chan_drop(struct channel *c)
{
	if (c->ino && c->fd >= 0)
		real_close(c->fd);
	c->ino = 0;
	c->fd = -1;
	c->busy = 0;
}

/* Thread exit: its channels go, so the service's channel threads end. */
static void chan_thread_exit(void *unused)
{
	(void)unused;
	for (int i = 0; i < NCHAN; i++)
		if (chans[i].ino && chans[i].pid == getpid())
			chan_drop(&chans[i]);
}

static void chan_key_init(void)
{
	pthread_key_create(&chan_key, chan_thread_exit);
}

/* A new channel registered with the service through the main socket. */
static int chan_open(int mainfd, struct channel *c, unsigned long ino)
{
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
		return -1;
	struct acrn_svc_ctl ctl = {ACRN_SVC_CTL_MAGIC, ACRN_SVC_CTL_CHANNEL, 0, 0, 0};
	ssize_t r = send_fds(mainfd, &ctl, sizeof(ctl), &sv[1], 1);
	int e = errno;
	real_close(sv[1]);
	struct acrn_svc_channel_hello hello;
	if (r != (ssize_t)sizeof(ctl) || recv_all(sv[0], &hello, sizeof(hello)) != (ssize_t)sizeof(hello) ||
	    hello.magic != ACRN_SVC_CTL_MAGIC) {
		real_close(sv[0]);
		errno = r < 0 ? e : EIO;
		return -1;
	}
	c->ino = ino;
	c->fd = sv[0];
	c->id = hello.channel;
	c->pid = getpid();
	c->busy = 0;
	c->seq = 0;
	return 0;
}

/* This thread's channel for the HSM file `ino`; a one-off one (in *tmp) when the thread's
 * channel is busy, i.e. this call comes from a signal handler that interrupted a call. */
static struct channel *chan_get(int mainfd, unsigned long ino, struct channel *tmp)
{
	pid_t pid = getpid();
	struct channel *victim = NULL;
	for (int i = 0; i < NCHAN; i++) {
		struct channel *c = &chans[i];
		if (c->ino && c->pid != pid) {
			/* Inherited through fork: the parent's.  Forget it without sending anything. */
			real_close(c->fd);
			c->ino = 0;
			c->fd = -1;
		}
		if (c->ino == ino && c->pid == pid) {
			if (c->busy)
				goto oneoff;
			c->used = ++chan_clock;
			return c;
		}
	}
	for (int i = 0; i < NCHAN; i++) {
		struct channel *c = &chans[i];
		if (c->busy)
			continue;
		if (!c->ino) {
			victim = c;
			break;
		}
		if (!victim || c->used < victim->used)
			victim = c;
	}
	if (!victim)
		goto oneoff;
	pthread_once(&chan_once, chan_key_init);
	pthread_setspecific(chan_key, (void *)1);
	chan_drop(victim);
	if (chan_open(mainfd, victim, ino) < 0)
		return NULL;
	victim->used = ++chan_clock;
	return victim;
oneoff:
	memset(tmp, 0, sizeof(*tmp));
	if (chan_open(mainfd, tmp, ino) < 0)
		return NULL;
	return tmp;
}

/* ---------------------------------------------------------------- user memory */
/* Read `len` bytes at `addr` without faulting: how many were readable. */
static size_t probe_read(uint64_t addr, void *buf, size_t len)
{
	size_t done = 0;
	while (done < len) {
		uint64_t a = addr + done;
		size_t chunk = PAGE - (a & (PAGE - 1));
		if (chunk > len - done)
			chunk = len - done;
		struct iovec local = {(char *)buf + done, chunk};
		struct iovec remote = {(void *)(uintptr_t)a, chunk};
		ssize_t r = syscall(SYS_process_vm_readv, getpid(), &local, 1UL, &remote, 1UL, 0UL);
		if (r <= 0)
			break;
		done += (size_t)r;
		if ((size_t)r < chunk)
			break;
	}
	return done;
}

static int probe_write(uint64_t addr, const void *buf, size_t len)
{
	struct iovec local = {(void *)buf, len};
	struct iovec remote = {(void *)(uintptr_t)addr, len};
	ssize_t r = syscall(SYS_process_vm_writev, getpid(), &local, 1UL, &remote, 1UL, 0UL);
	return r == (ssize_t)len;
}

struct vma {
	uint64_t start, end, offset;
	int prot, shared;
	unsigned long dev_major, dev_minor, ino;
};

/* The mappings of /proc/self/maps that overlap [lo, hi), in order (at most `max`). */
static int vmas_in(uint64_t lo, uint64_t hi, struct vma *out, int max)
{
	int fd = real_open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	char buf[8192];
	size_t have = 0;
	int n = 0;
	int eof = 0;
	while (!eof || have) {
		if (!eof && have < sizeof(buf) - 1) {
			ssize_t r = read(fd, buf + have, sizeof(buf) - 1 - have);
			if (r <= 0)
				eof = 1;
			else
				have += (size_t)r;
		}
		char *nl = memchr(buf, '\n', have);
		if (!nl) {
			if (eof || have >= sizeof(buf) - 1)
				break; /* a last line without newline, or one longer than the buffer */
			continue;
		}
		*nl = 0;
		struct vma v = {0};
		char perms[8] = {0};
		unsigned long long s, e, off;
		if (sscanf(buf, "%llx-%llx %4s %llx %lx:%lx %lu", &s, &e, perms, &off, &v.dev_major, &v.dev_minor,
			   &v.ino) == 7) {
			v.start = s;
			v.end = e;
			v.offset = off;
			v.prot = (perms[0] == 'r' ? PROT_READ : 0) | (perms[1] == 'w' ? PROT_WRITE : 0) |
				 (perms[2] == 'x' ? PROT_EXEC : 0);
			v.shared = perms[3] == 's';
			if (v.end > lo && v.start < hi) {
				if (n >= max) {
					n = max + 1;
					break;
				}
				out[n++] = v;
			}
		}
		size_t used = (size_t)(nl - buf) + 1;
		memmove(buf, nl + 1, have - used);
		have -= used;
	}
	real_close(fd);
	return n;
}

/* An fd of the file behind the shared mapping `v`. */
static int mapping_fd(const struct vma *v)
{
	char path[96];
	snprintf(path, sizeof(path), "/proc/self/map_files/%llx-%llx", (unsigned long long)v->start,
		 (unsigned long long)v->end);
	int fd = real_open(path, O_RDWR | O_CLOEXEC);
	if (fd >= 0)
		return fd;
	/* /proc/self/map_files needs CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE: look for an fd of
	 * the same file among the open ones. */
	DIR *d = opendir("/proc/self/fd");
	if (!d)
		return -1;
	struct dirent *de;
	int found = -1;
	while ((de = readdir(d)) != NULL) {
		int cand = atoi(de->d_name);
		struct stat st;
		if (de->d_name[0] == '.' || cand == dirfd(d) || fstat(cand, &st) < 0)
			continue;
		if (st.st_ino == v->ino && major(st.st_dev) == v->dev_major && minor(st.st_dev) == v->dev_minor) {
			found = fcntl(cand, F_DUPFD_CLOEXEC, 0);
			break;
		}
	}
	closedir(d);
	return found;
}

/* Turn the private memory [lo, hi) into a shared mapping of a new memfd, in place: same
 * address, same contents, same protection. */
static int share_in_place(uint64_t lo, uint64_t hi, int prot)
{
	size_t len = (size_t)(hi - lo);
	/* Sealable: the service seals it against shrinking (a page cut from under its mapping
	 * would be SIGBUS in the service). */
	int fd = (int)syscall(SYS_memfd_create, "pyacrn-shared", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (fd < 0)
		return -1;
	if (ftruncate(fd, (off_t)len) < 0)
		goto fail;
	size_t done = 0;
	while (done < len) {
		ssize_t w = pwrite(fd, (const char *)(uintptr_t)lo + done, len - done, (off_t)done);
		if (w <= 0) {
			if (w < 0 && errno == EINTR)
				continue;
			goto fail;
		}
		done += (size_t)w;
	}
	if (mmap((void *)(uintptr_t)lo, len, prot, MAP_SHARED | MAP_FIXED, fd, 0) == MAP_FAILED)
		goto fail;
	return fd;
fail:;
	int e = errno;
	real_close(fd);
	errno = e;
	return -1;
}

/* Describe the memory behind [addr, addr+len) for the service: fills *m and returns the fd
 * to attach (or -1 with *fault set when the kernel's pin would fail). */
static int share_range(const char *name, uint64_t addr, uint64_t len, struct acrn_svc_mem *m, int *fault)
{
	*fault = 1;
	if (len == 0 || addr + len < addr)
		return -1;
	uint64_t lo = addr & ~(PAGE - 1);
	uint64_t hi = (addr + len + PAGE - 1) & ~(PAGE - 1);
	if (hi < lo)
		return -1;
	struct vma v[16];
	int n = vmas_in(lo, hi, v, 16);
	if (n <= 0 || n > 16)
		return -1;
	/* The kernel pins with FOLL_WRITE: every page readable and writable, no hole. */
	uint64_t cur = lo;
	int any_shared = 0;
	for (int i = 0; i < n; i++) {
		if (v[i].start > cur || !(v[i].prot & PROT_READ) || !(v[i].prot & PROT_WRITE))
			return -1;
		cur = v[i].end;
		any_shared |= v[i].shared;
	}
	if (cur < hi)
		return -1;
	int fd;
	if (n == 1 && v[0].shared) {
		fd = mapping_fd(&v[0]);
		if (fd < 0) {
			say("%s: cannot open the file behind the shared mapping %#llx-%#llx: %s", name,
			    (unsigned long long)v[0].start, (unsigned long long)v[0].end, strerror(errno));
			return -1;
		}
		m->start = v[0].start;
		m->len = v[0].end - v[0].start;
		m->offset = v[0].offset;
		m->prot = (uint32_t)(v[0].prot & (PROT_READ | PROT_WRITE));
	} else if (!any_shared) {
		int prot = v[0].prot;
		fd = share_in_place(lo, hi, prot);
		if (fd < 0) {
			say("%s: cannot turn the private memory %#llx-%#llx into a shared mapping: %s", name,
			    (unsigned long long)lo, (unsigned long long)hi, strerror(errno));
			return -1;
		}
		m->start = lo;
		m->len = hi - lo;
		m->offset = 0;
		m->prot = (uint32_t)(prot & (PROT_READ | PROT_WRITE));
	} else {
		say("%s: the range %#llx-%#llx spans %d mappings, some shared: the service cannot map it", name,
		    (unsigned long long)lo, (unsigned long long)hi, n);
		return -1;
	}
	*fault = 0;
	return fd;
}

/* ---------------------------------------------------------------- the forwarded ioctl */
static int forward_ioctl(int fd, unsigned long ino, uint32_t cmd, unsigned long arg)
{
	const struct acrn_cmd *c = find_cmd(cmd);
	struct {
		struct acrn_svc_req req;
		struct acrn_svc_mem mem[ACRN_SVC_MAX_MEM];
		uint8_t arg[ACRN_SVC_MAX_ARG];
	} msg;
	struct acrn_svc_req *req = &msg.req;
	memset(req, 0, sizeof(*req));
	req->magic = ACRN_SVC_REQ_MAGIC;
	req->cmd = cmd;
	req->value = arg;
	req->fd_index = -1;
	int fds[ACRN_SVC_MAX_FDS];
	int nfds = 0;
	size_t want = 0;
	uint8_t *argbuf = (uint8_t *)&msg.mem[0];
	const char *name = c ? c->name : "ioctl";
	if (c && (c->kind == A_STRUCT || c->kind == A_PM)) {
		want = c->kind == A_PM ? PM_MAX_OUT : ((cmd >> 16) & 0x3FFF);
		req->flags |= ACRN_SVC_ARG_BUF;
	}
	/* The user address inside the argument, if any. */
	uint8_t tmp[ACRN_SVC_MAX_ARG];
	size_t got = 0;
	if (want) {
		got = probe_read(arg, tmp, want);
		if (got < want)
			req->flags |= ACRN_SVC_ARG_SHORT;
		if (got && (cmd >> 30) & 2 && !probe_write(arg, tmp, got))
			req->flags |= ACRN_SVC_ARG_RO;
	}
	uint64_t uaddr = 0, ulen = 0;
	if (c && c->embedded == E_IOREQ_BUF && got >= 40) {
		memcpy(&uaddr, tmp + 32, 8);
		ulen = PAGE - (uaddr & (PAGE - 1));
	} else if (c && c->embedded == E_VMA_BASE && got >= 32) {
		uint32_t type;
		uint64_t l;
		memcpy(&type, tmp, 4);
		memcpy(&uaddr, tmp + 16, 8);
		memcpy(&l, tmp + 24, 8);
		if (type == ACRN_MEMMAP_RAM && (l >> 12)) {
			ulen = l & ~(PAGE - 1);
		} else {
			uaddr = 0;
		}
	} else if (c && c->embedded == E_MONITOR) {
		uaddr = arg & ~(PAGE - 1);
		ulen = PAGE;
	}
	if (ulen) {
		int fault;
		int mfd = share_range(name, uaddr, ulen, &msg.mem[0], &fault);
		if (fault) {
			req->flags |= ACRN_SVC_ADDR_FAULT;
		} else {
			msg.mem[0].fd_index = nfds;
			fds[nfds++] = mfd;
			req->nmem = 1;
		}
	}
	if (c && c->embedded == E_EVENTFD && got >= 4) {
		int32_t efd;
		memcpy(&efd, tmp, 4);
		if (efd >= 0 && fcntl(efd, F_GETFD) >= 0) {
			req->fd_index = nfds;
			fds[nfds++] = efd;
			req->flags |= ACRN_SVC_FD_SENT;
		} else {
			req->flags |= ACRN_SVC_FD_BAD;
		}
	}
	argbuf = (uint8_t *)&msg.mem[req->nmem];
	memcpy(argbuf, tmp, got);
	req->arg_len = (uint32_t)got;
	size_t msglen = sizeof(*req) + req->nmem * sizeof(struct acrn_svc_mem) + got;

	/* ATTACH: signals wait (blocked) until the call waits for its answer, so that none is
	 * lost between the entry of the ioctl and that wait (the kernel's wait sees a signal
	 * that is already pending). */
	sigset_t allmask, oldmask;
	int masked = cmd == ATTACH_IOREQ_CLIENT;
	if (masked) {
		sigfillset(&allmask);
		pthread_sigmask(SIG_BLOCK, &allmask, &oldmask);
	}
	struct channel oneoff;
	struct channel *ch = chan_get(fd, ino, &oneoff);
	int ret = -1, err = 0;
	if (!ch) {
		say("%s: cannot open a channel to the service: %s", name, strerror(errno));
		err = EIO;
		goto out;
	}
	ch->busy = 1;
	req->seq = ++ch->seq;
	if (send_fds(ch->fd, &msg, msglen, fds, nfds) != (ssize_t)msglen) {
		say("%s: the service went away (%s)", name, strerror(errno));
		err = EIO;
		goto done;
	}
	/* Wait for the answer.  ppoll() is never restarted after a signal handler, so a signal
	 * that reaches a caller blocked in ATTACH is seen here and the call returns 0, as the
	 * kernel's does; one that came during the call's preparation was held pending by the
	 * mask and is delivered inside ppoll.  The service ignores a cancellation that reaches
	 * it before the call is waiting (it may still be queued): it is sent again every 50 ms
	 * until the answer comes. */
	int cancelled = 0;
	for (;;) {
		struct pollfd p = {ch->fd, POLLIN, 0};
		struct timespec again = {0, 50 * 1000000L};
		int r = masked ? ppoll(&p, 1, cancelled ? &again : NULL, &oldmask) : poll(&p, 1, -1);
		if (masked && ((r < 0 && errno == EINTR) || (r == 0 && cancelled))) {
			struct acrn_svc_ctl ctl = {ACRN_SVC_CTL_MAGIC, ACRN_SVC_CTL_CANCEL, ch->id, 0, req->seq};
			send_fds(fd, &ctl, sizeof(ctl), NULL, 0);
			cancelled = 1;
			continue;
		}
		if (r < 0 && errno == EINTR)
			continue;
		break;
	}
	struct {
		struct acrn_svc_rep rep;
		uint8_t out[ACRN_SVC_MAX_ARG];
	} reply;
	ssize_t r = recv_all(ch->fd, &reply, sizeof(reply));
	if (r < (ssize_t)sizeof(reply.rep) || reply.rep.magic != ACRN_SVC_REP_MAGIC || reply.rep.seq != req->seq ||
	    reply.rep.out_len > (size_t)r - sizeof(reply.rep) || reply.rep.out_len > got) {
		say("%s: no valid answer from the service (%s)", name, r < 0 ? strerror(errno) : "connection closed");
		chan_drop(ch);
		ch = NULL;
		err = EIO;
		goto out;
	}
	if (reply.rep.out_len)
		memcpy((void *)(uintptr_t)arg, reply.out, reply.rep.out_len);
	if (reply.rep.ret < 0) {
		err = (int)-reply.rep.ret;
	} else {
		ret = (int)reply.rep.ret;
	}
	if (cmd == ATTACH_IOREQ_CLIENT && cancelled && err == ENODEV) {
		/* A signal reached this thread in ATTACH.  In Linux its wait ends there and returns
		 * 0 (drivers/virt/acrn/ioreq.c: acrn_ioreq_client_wait checks is_destroying before
		 * the ioctl returns), and the handler runs only afterwards.  Here the handler has run
		 * while the call was still out: a DESTROY_IOREQ_CLIENT it made (acrn-dm's Ctrl-C)
		 * must not show in this call; the next ATTACH gives ENODEV. */
		err = 0;
		ret = 0;
	}
done:
	if (ch) {
		ch->busy = 0;
		if (ch == &oneoff)
			real_close(oneoff.fd);
	}
out:
	/* The service holds its own references now. */
	for (int i = 0; i < nfds; i++)
		if (!(req->fd_index == i))
			real_close(fds[i]);
	if (masked)
		pthread_sigmask(SIG_SETMASK, &oldmask, NULL);
	if (trace) {
		if (err)
			say("%s(%#lx) = -1 %s", name, arg, strerrorname_np(err) ? strerrorname_np(err) : "?");
		else
			say("%s(%#lx) = %d", name, arg, ret);
	}
	if (err) {
		errno = err;
		return -1;
	}
	return ret;
}

/* ---------------------------------------------------------------- interposed functions */
static int is_dev(const char *path)
{
	return from_env && path && strcmp(path, dev_path) == 0;
}

static int is_dev_at(int dirfd, const char *path)
{
	(void)dirfd; /* only absolute paths name the device */
	return is_dev(path);
}

EXPORT int ioctl(int fd, unsigned long request, ...)
{
	va_list ap;
	va_start(ap, request);
	unsigned long arg = va_arg(ap, unsigned long);
	va_end(ap);
	if (!real_ioctl)
		preload_init();
	/* Every ioctl on the HSM's file reaches its driver (acrn_dev_ioctl: EINVAL without a VM,
	 * ENOTTY for an unknown command), whatever its type, except the few the VFS answers for
	 * any file (fs/ioctl.c: do_vfs_ioctl), which mean the same for the socket.  Other types
	 * are looked at only on an fd already known as the HSM (no fstat per foreign ioctl). */
	uint32_t cmd = (uint32_t)request;
	int known = fd >= 0 && fd < MAX_TRACKED && hsm_ino[fd];
	if (active && (((cmd >> 8) & 0xFF) == 0xA2 || known) && cmd != FIOCLEX && cmd != FIONCLEX &&
	    cmd != FIONBIO && cmd != FIOASYNC) {
		unsigned long ino = hsm_file(fd);
		if (ino)
			return forward_ioctl(fd, ino, cmd, arg);
	}
	return real_ioctl(fd, request, arg);
}

EXPORT int close(int fd)
{
	if (!real_close)
		preload_init();
	if (active && fd >= 0 && fd < MAX_TRACKED && hsm_ino[fd]) {
		unsigned long ino = hsm_ino[fd];
		hsm_ino[fd] = 0;
		int others = 0;
		for (int i = 0; i < MAX_TRACKED && !others; i++)
			others = hsm_ino[i] == ino;
		/* This thread's channel of a file it no longer holds: drop it now rather than at
		 * thread exit (other threads' channels go when they exit or are reused). */
		if (!others)
			for (int i = 0; i < NCHAN; i++)
				if (chans[i].ino == ino && !chans[i].busy && chans[i].pid == getpid())
					chan_drop(&chans[i]);
	}
	return real_close(fd);
}

#define OPEN_BODY(call)                                                                                   \
	mode_t mode = 0;                                                                                  \
	if (flags & (O_CREAT | __O_TMPFILE)) {                                                            \
		va_list ap;                                                                               \
		va_start(ap, flags);                                                                      \
		mode = (mode_t)va_arg(ap, int);                                                           \
		va_end(ap);                                                                               \
	}                                                                                                 \
	return call;

EXPORT int open(const char *path, int flags, ...)
{
	if (!real_open)
		preload_init();
	if (is_dev(path))
		return hsm_open(svc_path, flags);
	OPEN_BODY(real_open(path, flags, mode))
}

EXPORT int open64(const char *path, int flags, ...)
{
	if (!real_open64)
		preload_init();
	if (is_dev(path))
		return hsm_open(svc_path, flags);
	OPEN_BODY(real_open64(path, flags, mode))
}

EXPORT int openat(int dirfd, const char *path, int flags, ...)
{
	if (!real_openat)
		preload_init();
	if (is_dev_at(dirfd, path))
		return hsm_open(svc_path, flags);
	OPEN_BODY(real_openat(dirfd, path, flags, mode))
}

EXPORT int openat64(int dirfd, const char *path, int flags, ...)
{
	if (!real_openat64)
		preload_init();
	if (is_dev_at(dirfd, path))
		return hsm_open(svc_path, flags);
	OPEN_BODY(real_openat64(dirfd, path, flags, mode))
}

EXPORT int __open_2(const char *path, int flags)
{
	return is_dev(path) ? hsm_open(svc_path, flags) : real_open_2(path, flags);
}

EXPORT int __open64_2(const char *path, int flags)
{
	return is_dev(path) ? hsm_open(svc_path, flags) : real_open64_2(path, flags);
}

EXPORT int __openat_2(int dirfd, const char *path, int flags)
{
	return is_dev_at(dirfd, path) ? hsm_open(svc_path, flags) : real_openat_2(dirfd, path, flags);
}

EXPORT int __openat64_2(int dirfd, const char *path, int flags)
{
	return is_dev_at(dirfd, path) ? hsm_open(svc_path, flags) : real_openat64_2(dirfd, path, flags);
}

/* What stat() reports for the device: a root-owned 0600 misc character device, as the
 * kernel's misc_register makes it (major 10). */
#define FAKE_STAT(st)                                                                                     \
	do {                                                                                              \
		memset((st), 0, sizeof(*(st)));                                                           \
		(st)->st_mode = S_IFCHR | 0600;                                                           \
		(st)->st_rdev = makedev(10, 120);                                                         \
		(st)->st_nlink = 1;                                                                       \
		(st)->st_blksize = 4096;                                                                  \
		(st)->st_dev = makedev(0, 5);                                                             \
		(st)->st_ino = 1;                                                                         \
	} while (0)

EXPORT int stat(const char *path, struct stat *st)
{
	if (is_dev(path)) {
		FAKE_STAT(st);
		return 0;
	}
	return real_stat(path, st);
}

EXPORT int lstat(const char *path, struct stat *st)
{
	if (is_dev(path)) {
		FAKE_STAT(st);
		return 0;
	}
	return real_lstat(path, st);
}

EXPORT int stat64(const char *path, struct stat64 *st)
{
	if (is_dev(path)) {
		FAKE_STAT(st);
		return 0;
	}
	return real_stat64(path, st);
}

EXPORT int lstat64(const char *path, struct stat64 *st)
{
	if (is_dev(path)) {
		FAKE_STAT(st);
		return 0;
	}
	return real_lstat64(path, st);
}

EXPORT int fstatat(int dirfd, const char *path, struct stat *st, int flags)
{
	if (is_dev_at(dirfd, path)) {
		FAKE_STAT(st);
		return 0;
	}
	return real_fstatat(dirfd, path, st, flags);
}

EXPORT int fstatat64(int dirfd, const char *path, struct stat64 *st, int flags)
{
	if (is_dev_at(dirfd, path)) {
		FAKE_STAT(st);
		return 0;
	}
	return real_fstatat64(dirfd, path, st, flags);
}

EXPORT int __xstat(int ver, const char *path, struct stat *st)
{
	if (is_dev(path)) {
		FAKE_STAT(st);
		return 0;
	}
	return real_xstat(ver, path, st);
}

EXPORT int __lxstat(int ver, const char *path, struct stat *st)
{
	if (is_dev(path)) {
		FAKE_STAT(st);
		return 0;
	}
	return real_lxstat(ver, path, st);
}

EXPORT int __xstat64(int ver, const char *path, struct stat64 *st)
{
	if (is_dev(path)) {
		FAKE_STAT(st);
		return 0;
	}
	return real_xstat64(ver, path, st);
}

EXPORT int __lxstat64(int ver, const char *path, struct stat64 *st)
{
	if (is_dev(path)) {
		FAKE_STAT(st);
		return 0;
	}
	return real_lxstat64(ver, path, st);
}

EXPORT int __fxstatat(int ver, int dirfd, const char *path, struct stat *st, int flags)
{
	if (is_dev_at(dirfd, path)) {
		FAKE_STAT(st);
		return 0;
	}
	return real_fxstatat(ver, dirfd, path, st, flags);
}

EXPORT int __fxstatat64(int ver, int dirfd, const char *path, struct stat64 *st, int flags)
{
	if (is_dev_at(dirfd, path)) {
		FAKE_STAT(st);
		return 0;
	}
	return real_fxstatat64(ver, dirfd, path, st, flags);
}

EXPORT int statx(int dirfd, const char *path, int flags, unsigned int mask, struct statx *stx)
{
	if (is_dev_at(dirfd, path)) {
		memset(stx, 0, sizeof(*stx));
		stx->stx_mask = STATX_BASIC_STATS;
		stx->stx_mode = S_IFCHR | 0600;
		stx->stx_nlink = 1;
		stx->stx_blksize = 4096;
		stx->stx_rdev_major = 10;
		stx->stx_rdev_minor = 120;
		stx->stx_ino = 1;
		return 0;
	}
	return real_statx(dirfd, path, flags, mask, stx);
}

/* access(): the device is mode 0600 root: only its owner (root) may read or write it. */
static int dev_access(int amode)
{
	if ((amode & (R_OK | W_OK | X_OK)) == 0 || ((amode & X_OK) == 0 && geteuid() == 0))
		return 0;
	errno = EACCES;
	return -1;
}

EXPORT int access(const char *path, int amode)
{
	return is_dev(path) ? dev_access(amode) : real_access(path, amode);
}

EXPORT int faccessat(int dirfd, const char *path, int amode, int flags)
{
	return is_dev_at(dirfd, path) ? dev_access(amode) : real_faccessat(dirfd, path, amode, flags);
}

EXPORT int euidaccess(const char *path, int amode)
{
	return is_dev(path) ? dev_access(amode) : real_euidaccess(path, amode);
}

EXPORT int eaccess(const char *path, int amode)
{
	return euidaccess(path, amode);
}

/* ---------------------------------------------------------------- for Python (ctypes) */
/* Open the HSM file of the service at `socket_path` (pyacrn's Hsm.open("service")). */
EXPORT int acrn_preload_open(const char *socket_path, int flags)
{
	if (!real_ioctl)
		preload_init();
	if (!socket_path || !*socket_path || strlen(socket_path) >= SUN_LEN_MAX) {
		errno = EINVAL;
		return -1;
	}
	pthread_mutex_lock(&svc_lock);
	int known = 0;
	for (int i = 0; i < nsvc; i++)
		known |= strcmp(svc_paths[i], socket_path) == 0;
	if (!known) {
		int slot = nsvc < MAX_SERVICES ? nsvc : -1;
		/* Full: take the place of a service whose socket is gone (slot 0, the one
		 * /dev/acrn_hsm leads to, stays). */
		for (int i = 1; slot < 0 && i < MAX_SERVICES; i++) {
			struct stat st;
			if (real_stat(svc_paths[i], &st) < 0 && errno == ENOENT)
				slot = i;
		}
		if (slot < 0) {
			pthread_mutex_unlock(&svc_lock);
			errno = EMFILE;
			return -1;
		}
		strcpy(svc_paths[slot], socket_path);
		if (slot == nsvc)
			__atomic_store_n(&nsvc, nsvc + 1, __ATOMIC_RELEASE);
	}
	active = 1;
	pthread_mutex_unlock(&svc_lock);
	return hsm_open(socket_path, flags);
}
