//go:build linux

#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <linux/securebits.h>

/*
 * axo_spawn_userns forks a child that becomes uid/gid and then unshares a user namespace, which
 * the kernel records as owned by uid: the kernel charges the per-user counts of everything inside
 * it (inotify instances, RLIMIT_NPROC, user namespaces...) to uid at the host level, not to root.
 * SECBIT_NO_SETUID_FIXUP keeps the child's capabilities across the uid change, so the unshare
 * works even where unprivileged user namespaces are disabled. The child then writes one byte to
 * readyfd (0, or an errno on failure) and sleeps until the parent kills it; the parent writes the
 * id maps and keeps a handle on the namespace.
 *
 * Only raw system calls run in the child (it is a fork of a multi-threaded Go process).
 * Returns the child's pid, or -errno.
 */
int axo_spawn_userns(unsigned int uid, unsigned int gid, int readyfd)
{
	pid_t pid = fork();
	if (pid < 0)
		return -errno;
	if (pid > 0)
		return pid;

	unsigned char code = 0;
	syscall(SYS_prctl, PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
	if (syscall(SYS_prctl, PR_SET_SECUREBITS, SECBIT_NO_SETUID_FIXUP, 0, 0, 0) < 0 ||
	    syscall(SYS_setgroups, 0, NULL) < 0 ||
	    syscall(SYS_setresgid, gid, gid, gid) < 0 ||
	    syscall(SYS_setresuid, uid, uid, uid) < 0 ||
	    syscall(SYS_unshare, CLONE_NEWUSER) < 0)
		code = (unsigned char)errno;
	syscall(SYS_write, readyfd, &code, 1);
	if (code != 0)
		syscall(SYS_exit_group, 1);
	for (;;) {
#ifdef SYS_pause
		syscall(SYS_pause);
#else
		/* arm64 and other newer ABIs have no pause: ppoll of nothing, without a timeout. */
		syscall(SYS_ppoll, NULL, 0, NULL, NULL, 0);
#endif
	}
}

/*
 * axo_prlimit_as lowers resource of pid to cur/max from a vfork child that first becomes uid/gid,
 * the owner of pid's user namespace. The runtime's own prlimit, from root, needs CAP_SYS_RESOURCE
 * over the namespace, which a root without that capability (some hosts withhold it) lacks; the
 * namespace's owner has every capability in it. Returns 0 or -errno.
 */
int axo_prlimit_as(unsigned int uid, unsigned int gid, int pid, int resource,
		   unsigned long long cur, unsigned long long max)
{
	volatile int err = 0; /* vfork: the child shares this memory */
	struct rlimit64 {
		unsigned long long cur, max;
	} rl = { cur, max };
	pid_t c = vfork();
	if (c < 0)
		return -errno;
	if (c == 0) {
		if (syscall(SYS_setgroups, 0, NULL) < 0 ||
		    syscall(SYS_setresgid, gid, gid, gid) < 0 ||
		    syscall(SYS_setresuid, uid, uid, uid) < 0 ||
		    syscall(SYS_prlimit64, pid, resource, &rl, NULL) < 0)
			err = errno;
		syscall(SYS_exit, 0);
	}
	int status;
	while (syscall(SYS_wait4, c, &status, 0, NULL) < 0 && errno == EINTR)
		;
	return -err;
}
