/*
 * mounts.c: the private mount points the container runtime binds from.
 *
 * paths.c holds a job's directories as descriptors; here each held
 * directory is bound, by its descriptor, onto a fresh mount point in the
 * worker's private directory (cid_dir: 0700, outside builds_root, locked
 * for the worker's life), and unmounted at the job's end.  Binding is a
 * plain mount(2), or "sudo -n mount" for a worker that drives the
 * runtime through sudo, or, for docker, a detached clone attached in
 * dockerd's own mount namespace.  mounts_sweep() undoes the mount points
 * a killed worker left behind.
 */
#include <errno.h>
#include <sched.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "mounts.h"

/* Run "sudo -n" and args (mount, umount) to completion; 0 when it exited 0. */
static int
mounts_sudo(const char *const *args)
{
	struct strv argv = { 0 };
	int st;

	strv_push(&argv, "sudo");
	strv_push(&argv, "-n");
	for (; *args != NULL; args++)
		strv_push(&argv, *args);
	st = proc_run_sync(argv.v, NULL, 0);
	strv_free(&argv);
	return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : -1;
}

/*
 * The docker daemon's pid: whoever listens on the socket the client uses
 * (DOCKER_HOST unix://..., else /var/run/docker.sock), from SO_PEERCRED
 * (systemd's, PID 1, when the socket is activated: dockerd then runs in
 * its namespace).  1 when it cannot be told.
 */
static pid_t
mounts_docker_pid(void)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	const char *h = getenv("DOCKER_HOST"), *path = "/var/run/docker.sock";
	socklen_t len = sizeof(struct ucred);
	struct ucred cr;
	pid_t pid = 1;
	int fd;

	if (h != NULL && *h != '\0')
		path = strncmp(h, "unix://", 7) == 0 ? h + 7 : "";
	if (*path == '\0' || strlen(path) >= sizeof sa.sun_path)
		return 1;
	memcpy(sa.sun_path, path, strlen(path));
	if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0)
		return 1;
	if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0 &&
	    getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) == 0 && cr.pid > 0)
		pid = cr.pid;
	close(fd);
	return pid;
}

/*
 * dockerd is not our child: it binds in its own mount namespace, and a
 * mount made in ours does not reach it when we run in a namespace of our
 * own (systemd's ProtectSystem=, PrivateTmp=).  So for docker the held
 * directory is cloned as a detached mount (open_tree(OPEN_TREE_CLONE) on
 * the descriptor: still no name), and a child that entered the daemon's
 * mount namespace attaches it at the same mount point there (move_mount);
 * the unmount goes the same way.  In the daemon's namespace already, that
 * is the same as a plain bind.
 */
static int
mounts_in_daemon_ns(pid_t daemon, int tree, const char *at, bool unmount)
{
	char nspath[64];
	int st, ns;
	pid_t pid;

	snprintf(nspath, sizeof nspath, "/proc/%d/ns/mnt", (int)daemon);
	if ((pid = fork()) < 0)
		return errno;
	if (pid == 0) {
		if ((ns = open(nspath, O_RDONLY | O_CLOEXEC)) < 0 || setns(ns, CLONE_NEWNS) != 0)
			_exit(errno & 0x7f);
		if (unmount ? umount2(at, MNT_DETACH) : move_mount(tree, "", AT_FDCWD, at, MOVE_MOUNT_F_EMPTY_PATH))
			_exit(errno & 0x7f);
		_exit(0);
	}
	while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
		;
	return WIFEXITED(st) ? WEXITSTATUS(st) : EINTR;
}

/* Whether the mount point at, as the daemon's namespace sees it, is the held directory fd. */
bool
mounts_seen_by(pid_t daemon, int fd, const char *at)
{
	struct stat a, b;
	char *p = xasprintf("/proc/%d/root%s", (int)daemon, at);
	bool same = stat(p, &a) == 0 && fstat(fd, &b) == 0 && a.st_dev == b.st_dev && a.st_ino == b.st_ino;

	free(p);
	return same;
}

/* The docker way: a detached clone of the held directory, attached in the daemon's namespace. */
static int
mounts_bind_docker(int fd, const char *at, bool ro, char *err, size_t errlen)
{
	struct mount_attr attr = { .attr_set = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV };
	pid_t daemon = mounts_docker_pid();
	int tree, e;

	if ((tree = open_tree(fd, "", OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_EMPTY_PATH)) < 0) {
		snprintf(err, errlen, "%s", errno == ENOENT ? "the directory was removed before the build could "
		    "start" : strerror(errno));
		return -1;
	}
	if (ro && mount_setattr(tree, "", AT_EMPTY_PATH, &attr, sizeof attr) != 0 && errno != ENOSYS) {
		snprintf(err, errlen, "cannot make the clone read-only: %s", strerror(errno));
		close(tree);
		return -1;
	}
	e = mounts_in_daemon_ns(daemon, tree, at, false);
	close(tree);
	if (e != 0) {
		snprintf(err, errlen, "cannot attach the job's directory at %s in the mount namespace of dockerd "
		    "(pid %d): %s", at, (int)daemon, strerror(e));
		return -1;
	}
	if (!mounts_seen_by(daemon, fd, at)) {
		snprintf(err, errlen, "dockerd (pid %d) does not see the job's directory at %s", (int)daemon, at);
		mounts_in_daemon_ns(daemon, -1, at, true);
		return -1;
	}
	return 0;
}

/*
 * Bind the held directory fd onto the fresh mount point at, read-only
 * when ro.  A worker without CAP_SYS_ADMIN that drives the runtime
 * through sudo does it with sudo mount, through /proc/<our pid>/fd/N.
 */
static int
mounts_bind(int fd, const char *at, bool ro, char *err, size_t errlen)
{
	char src[64];

	if (wk->rt.kind == RT_DOCKER && geteuid() == 0)
		return mounts_bind_docker(fd, at, ro, err, errlen);
	snprintf(src, sizeof src, "/proc/self/fd/%d", fd);
	if (mount(src, at, NULL, MS_BIND, NULL) == 0) {
		if (!ro || mount(NULL, at, NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, NULL) == 0)
			return 0;
		snprintf(err, errlen, "cannot make %s read-only: %s", at, strerror(errno));
		umount2(at, MNT_DETACH);
		return -1;
	}
	if (errno == EPERM && wk->rt.sudo) {
		const char *bind[] = { "mount", "--no-canonicalize", "--bind", src, at, NULL };
		const char *remount[] = { "mount", "--no-canonicalize", "-o", "remount,bind,ro,nosuid,nodev", at, NULL };
		const char *undo[] = { "umount", "-l", at, NULL };

		snprintf(src, sizeof src, "/proc/%d/fd/%d", (int)getpid(), fd);
		if (mounts_sudo(bind) == 0) {
			if (!ro || mounts_sudo(remount) == 0)
				return 0;
			mounts_sudo(undo);
		}
		snprintf(err, errlen, "cannot bind-mount the job's directory at %s with sudo mount", at);
		return -1;
	}
	if (errno == ENOENT)	/* the kernel binds no unlinked directory */
		snprintf(err, errlen, "the directory was removed before the build could start");
	else
		snprintf(err, errlen, "cannot bind-mount the job's directory at %s: %s (container builds "
		    "need a worker that may mount, or sudo)", at, strerror(errno));
	return -1;
}

/* Undo one mount point made by mounts_mount(). */
void
mounts_unmount(char **at)
{
	const char *undo[] = { "umount", "-l", *at, NULL };

	if (*at == NULL)
		return;
	if (wk->rt.kind == RT_DOCKER && geteuid() == 0)
		mounts_in_daemon_ns(mounts_docker_pid(), -1, *at, true);	/* where mounts_bind_docker() attached it */
	if (umount2(*at, MNT_DETACH) != 0 && errno == EPERM && wk->rt.sudo)
		mounts_sudo(undo);
	if (rmdir(*at) != 0 && errno != ENOENT)
		log_warn("cannot remove the mount point %s: %s", *at, strerror(errno));
	free(*at);
	*at = NULL;
}

/* A fresh mount point "<cid_dir>/<id>.<attempt>.<kind>" with dir bound on it. */
int
mounts_mount(struct job *j, const struct path_dir *dir, const char *kind, bool ro, char **at, char *err,
    size_t errlen)
{
	char e[ERR_MAX];

	*at = xasprintf("%s/%s.%ld.%s", wk->cid_dir, j->id, j->attempt, kind);
	if (strpbrk(*at, ":,") != NULL) {
		snprintf(err, errlen, "the mount point %s holds ':' or ',', which a volume cannot carry", *at);
		goto fail;
	}
	if (mkdir(*at, 0700) != 0 && (errno != EEXIST || rmdir(*at) != 0 || mkdir(*at, 0700) != 0)) {
		snprintf(err, errlen, "cannot make the mount point %s: %s", *at, strerror(errno));
		goto fail;
	}
	if (mounts_bind(dir->fd, *at, ro, e, sizeof e) != 0) {
		snprintf(err, errlen, "%s \"%s\": %s", kind, strcmp(kind, "output") == 0 ? j->spec.output :
		    j->spec.profile, e);
		rmdir(*at);
		goto fail;
	}
	return 0;
fail:
	free(*at);
	*at = NULL;
	return -1;
}

/* Undo the mount points in one mountinfo (ns: the daemon's pid, or 0 for ours) of dead workers. */
static void
mounts_sweep_in(const char *mountinfo, pid_t ns, const char *parent, const char *own)
{
	size_t plen = strlen(parent);
	char line[8192], mp[4096];
	FILE *f;

	if ((f = fopen(mountinfo, "re")) == NULL)
		return;
	while (fgets(line, sizeof line, f) != NULL) {
		char *p = line, *q = mp, *dir, *name, *d;
		int lockfd;
		/* The mount point is the fifth field, with \ooo escapes. */
		for (int i = 0; i < 4 && p != NULL; i++)
			p = strchr(p, ' ') ? strchr(p, ' ') + 1 : NULL;
		if (p == NULL)
			continue;
		for (; *p != ' ' && *p != '\0' && q < mp + sizeof mp - 1; p++) {
			if (p[0] == '\\' && p[1] >= '0' && p[1] <= '3' && p[2] >= '0' && p[3] >= '0') {
				*q++ = (char)((p[1] - '0') << 6 | (p[2] - '0') << 3 | (p[3] - '0'));
				p += 3;
			} else
				*q++ = *p;
		}
		*q = '\0';
		/* PARENT/debate-.../NAME.profile or .output, in a directory not ours */
		if (strncmp(mp, parent, plen) != 0 || mp[plen] != '/' || strncmp(mp + plen + 1, "debate-", 7) != 0)
			continue;
		dir = mp + plen + 1;
		if ((name = strchr(dir, '/')) == NULL || strchr(name + 1, '/') != NULL ||
		    (!((d = strrchr(name, '.')) != NULL && (strcmp(d, ".profile") == 0 || strcmp(d, ".output") == 0))))
			continue;
		*name = '\0';
		if (strcmp(dir, own) == 0)
			continue;
		/* Its worker holds this lock while it lives: free means dead, and held by us it stays dead. */
		{
			char *dpath = xasprintf("%s/%s", parent, dir);
			lockfd = open(dpath, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
			free(dpath);
		}
		*name = '/';
		if (lockfd < 0)
			continue;
		if (flock(lockfd, LOCK_EX | LOCK_NB) == 0) {
			const char *undo[] = { "umount", "-l", mp, NULL };
			bool done;

			if (ns > 0)
				mounts_in_daemon_ns(ns, -1, mp, true);
			else if (umount2(mp, MNT_DETACH) != 0 && errno == EPERM && wk->rt.sudo)
				mounts_sudo(undo);
			done = rmdir(mp) == 0 || errno == ENOENT;
			if (done)
				log_notice("unmounted %s, left by a worker that is gone", mp);
			else
				log_warn("cannot undo %s, left by a worker that is gone: %s", mp, strerror(errno));
		}
		close(lockfd);
	}
	fclose(f);
}

/*
 * A worker killed with its jobs (SIGKILL, the watchdog) leaves their
 * mount points mounted in its directory.  Each worker locks its own
 * directory (flock) before its first mount and holds the lock for life;
 * before each of our mounts and after each unmount (reading mountinfo is
 * cheap next to a container) we undo what sits in unlocked directories
 * next to ours, as we and, for docker, dockerd see them.
 */
void
mounts_sweep(void)
{
	char *parent = xstrdup(wk->cid_dir), *own = strrchr(parent, '/'), path[64];
	pid_t daemon;

	if (own == NULL || own == parent) {
		free(parent);
		return;
	}
	*own++ = '\0';
	mounts_sweep_in("/proc/self/mountinfo", 0, parent, own);
	if (wk->rt.kind == RT_DOCKER && geteuid() == 0 && (daemon = mounts_docker_pid()) > 0) {
		snprintf(path, sizeof path, "/proc/%d/mountinfo", (int)daemon);
		mounts_sweep_in(path, daemon, parent, own);
	}
	free(parent);
}

/*
 * The worker's private directory must be out of every build's reach: not
 * below builds_root, and neither holding nor inside this job's
 * directories (which would let the build reach the mount points).
 */
int
mounts_private_ok(const struct job *j, char *err, size_t errlen)
{
	static struct path_dir cid;	/* opened once: the directory lives as long as we do */
	struct stat st;
	char e[ERR_MAX];
	int fd;

	if (cid.chain == NULL) {
		/* Kept open and locked for our life: mounts_sweep() of another worker reads the lock. */
		snprintf(e, sizeof e, "%s", "cannot open or lock it");
		if ((fd = open(wk->cid_dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)) < 0 ||
		    flock(fd, LOCK_EX | LOCK_NB) != 0 || path_from_fd(fd, NULL, &cid, e, sizeof e) != 0) {
			snprintf(err, errlen, "the worker's directory %s: %s", wk->cid_dir, e);
			if (fd >= 0)
				close(fd);
			return -1;
		}
	}
	mounts_sweep();
	if (stat(wk->conf->builds_root, &st) == 0) {
		for (size_t i = 0; i < cid.depth; i++) {
			if (cid.chain[i].dev == st.st_dev && cid.chain[i].ino == st.st_ino) {
				snprintf(err, errlen, "the worker's directory %s is inside builds_root: a build "
				    "could reach its mount points (set TMPDIR or RUNTIME_DIRECTORY elsewhere)",
				    wk->cid_dir);
				return -1;
			}
		}
	}
	if (path_nested(&cid, &j->paths.profile) || path_nested(&cid, &j->paths.output)) {
		snprintf(err, errlen, "the job's directories overlap the worker's own directory %s", wk->cid_dir);
		return -1;
	}
	return 0;
}
