/*
 * The HSM fd across fork, exec and dup: it is one open file, shared by every descriptor that
 * refers to it, and the VM lives until the last one is closed (drivers/virt/acrn/hsm.c:
 * acrn_dev_release runs on the last fput).
 *
 * usage: forkexec MODE NAME [FD]
 *   fork          the child inherits the fd and uses it after the parent closed its own
 *   exec          the fd (no O_CLOEXEC) survives exec of this program in mode exec-child
 *   cloexec       the fd (O_CLOEXEC) is closed by exec: the child finds the name free
 *   dup           dup, F_DUPFD_CLOEXEC, F_GETFD/F_SETFD on the fd
 * Lines printed: "STEP RESULT" (RESULT: a return value, or -1/ERRNO-NAME; a vmid for creates).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/acrn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <unistd.h>

static struct acrn_io_request_buffer io_page __attribute__((aligned(4096)));
#define UNKNOWN_CMD 0xA299 /* ENOTTY while the fd has a VM, EINVAL when it has none */

static void show(const char *step, int r)
{
	if (r < 0)
		printf("%s -1/%s\n", step, strerrorname_np(errno) ?: "?");
	else
		printf("%s %d\n", step, r);
	fflush(stdout);
}

/* CREATE_VM: its vmid, or -1 with errno. */
static int create(int fd, const char *name)
{
	struct acrn_vm_creation vm = {0};
	strncpy((char *)&vm.uuid, name, sizeof(vm.uuid) - 1);
	vm.ioreq_buf = (__u64)(unsigned long)&io_page;
	int r = ioctl(fd, ACRN_IOCTL_CREATE_VM, &vm);
	return r < 0 ? r : vm.vmid;
}

/* CREATE_VM of `name` on a new fd (closed again): EINVAL while another fd holds the name, else
 * the vmid, which is the first free one: the released VM's. */
static void try_name(const char *step, const char *name)
{
	int fd = open("/dev/acrn_hsm", O_RDWR | O_CLOEXEC);
	if (fd < 0) {
		show(step, -1);
		return;
	}
	show(step, create(fd, name));
	if (ioctl(fd, ACRN_IOCTL_PAUSE_VM, 0) == 0)
		ioctl(fd, ACRN_IOCTL_DESTROY_VM, 0);
	close(fd);
}

static int open_vm(const char *name, int flags)
{
	int fd = open("/dev/acrn_hsm", O_RDWR | flags);
	if (fd < 0) {
		perror("open /dev/acrn_hsm");
		exit(1);
	}
	show("create", create(fd, name));
	return fd;
}

int main(int argc, char **argv)
{
	if (argc < 3)
		return 2;
	const char *mode = argv[1], *name = argv[2];
	char fdarg[16];

	if (strcmp(mode, "fork") == 0) {
		int fd = open_vm(name, O_CLOEXEC);
		int go[2];
		if (pipe(go) < 0)
			return 1;
		pid_t pid = fork();
		if (pid == 0) {
			char c;
			close(go[1]);
			if (read(go[0], &c, 1) != 1) /* the parent has closed its fd */
				return 1;
			show("child.unknown_cmd", ioctl(fd, UNKNOWN_CMD, 0));
			show("child.create_client", ioctl(fd, ACRN_IOCTL_CREATE_IOREQ_CLIENT, 0));
			try_name("child.name_still_held", name);
			close(fd); /* the last reference: the VM goes */
			try_name("child.name_free_after_last_close", name);
			return 0;
		}
		close(go[0]);
		show("parent.create_client", ioctl(fd, ACRN_IOCTL_CREATE_IOREQ_CLIENT, 0));
		close(fd);
		try_name("parent.name_held_by_child", name);
		if (write(go[1], "x", 1) != 1)
			return 1;
		int st;
		waitpid(pid, &st, 0);
		show("child.exit", WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
		return 0;
	}
	if (strcmp(mode, "exec") == 0 || strcmp(mode, "cloexec") == 0) {
		int cloexec = strcmp(mode, "cloexec") == 0;
		int fd = open_vm(name, cloexec ? O_CLOEXEC : 0);
		show("parent.create_client", ioctl(fd, ACRN_IOCTL_CREATE_IOREQ_CLIENT, 0));
		snprintf(fdarg, sizeof(fdarg), "%d", fd);
		execl("/proc/self/exe", argv[0], cloexec ? "cloexec-child" : "exec-child", name, fdarg, (char *)NULL);
		perror("exec");
		return 1;
	}
	if (strcmp(mode, "exec-child") == 0 && argc > 3) {
		int fd = atoi(argv[3]);
		show("child.fd_open", fcntl(fd, F_GETFD));
		show("child.unknown_cmd", ioctl(fd, UNKNOWN_CMD, 0));
		show("child.create_client", ioctl(fd, ACRN_IOCTL_CREATE_IOREQ_CLIENT, 0)); /* the parent's: EEXIST */
		try_name("child.name_held", name);
		close(fd);
		try_name("child.name_free_after_close", name);
		return 0;
	}
	if (strcmp(mode, "cloexec-child") == 0 && argc > 3) {
		int fd = atoi(argv[3]);
		show("child.fd_open", fcntl(fd, F_GETFD));
		try_name("child.name_free", name); /* exec closed the last reference */
		return 0;
	}
	if (strcmp(mode, "dup") == 0) {
		int fd = open_vm(name, O_CLOEXEC);
		show("getfd_cloexec", fcntl(fd, F_GETFD));
		int fd2 = dup(fd);
		int fd3 = fcntl(fd, F_DUPFD_CLOEXEC, 100);
		show("dup_ok", fd2 >= 0 && fd3 >= 100);
		show("dup.getfd", fcntl(fd2, F_GETFD));
		show("dupfd_cloexec.getfd", fcntl(fd3, F_GETFD));
		show("setfd", fcntl(fd3, F_SETFD, 0));
		show("setfd.getfd", fcntl(fd3, F_GETFD));
		show("create_client", ioctl(fd, ACRN_IOCTL_CREATE_IOREQ_CLIENT, 0));
		close(fd);
		show("dup.create_client", ioctl(fd2, ACRN_IOCTL_CREATE_IOREQ_CLIENT, 0));
		close(fd2);
		show("dupfd.unknown_cmd", ioctl(fd3, UNKNOWN_CMD, 0));
		try_name("name_held_by_dupfd", name);
		show("dupfd.pause", ioctl(fd3, ACRN_IOCTL_PAUSE_VM, 0));
		show("dupfd.destroy", ioctl(fd3, ACRN_IOCTL_DESTROY_VM, 0));
		show("dupfd.unknown_cmd_after_destroy", ioctl(fd3, UNKNOWN_CMD, 0));
		close(fd3);
		show("closed.unknown_cmd", ioctl(fd3, UNKNOWN_CMD, 0));
		return 0;
	}
	return 2;
}
