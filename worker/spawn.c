/*
 * spawn.c: starting children.
 *
 * posix_spawn() rather than fork(): glibc runs it as clone(CLONE_VM |
 * CLONE_VFORK), so starting a build costs no copy of our page tables,
 * which the dispatch benchmark measured.  It does what the fork idiom
 * does by hand: every signal is blocked around the clone, the child gets
 * our normal mask back and default dispositions, every fd above stderr is
 * closed before exec, and an exec failure comes back as an error number
 * instead of a child that would _exit(127).
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "worker.h"

extern char **environ;

/* Make a pipe whose read end we keep (non-blocking, close-on-exec). */
static int
spawn_pipe(int p[2], char *err, size_t errlen)
{
	if (pipe2(p, O_CLOEXEC) != 0) {
		snprintf(err, errlen, "pipe: %s", strerror(errno));
		return -1;
	}
	if (fcntl(p[0], F_SETFL, O_NONBLOCK) != 0) {
		snprintf(err, errlen, "fcntl: %s", strerror(errno));
		close(p[0]);
		close(p[1]);
		return -1;
	}
	return 0;
}

/* Start argv; see worker.h. */
pid_t
spawn(char *const argv[], char *const envp[], int *out_fd, int *err_fd, char *err, size_t errlen)
{
	int po[2] = { -1, -1 }, pe[2] = { -1, -1 }, rc;
	posix_spawn_file_actions_t fa;
	posix_spawnattr_t attr;
	sigset_t none, all;
	pid_t pid = -1;

	if (out_fd != NULL && spawn_pipe(po, err, errlen) != 0)
		return -1;
	if (err_fd != NULL && spawn_pipe(pe, err, errlen) != 0) {
		if (po[0] >= 0) {
			close(po[0]);
			close(po[1]);
		}
		return -1;
	}

	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_addopen(&fa, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
	if (po[1] >= 0)
		posix_spawn_file_actions_adddup2(&fa, po[1], STDOUT_FILENO);
	else
		posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, "/dev/null", O_WRONLY, 0);
	if (pe[1] >= 0)
		posix_spawn_file_actions_adddup2(&fa, pe[1], STDERR_FILENO);
	else
		posix_spawn_file_actions_addopen(&fa, STDERR_FILENO, "/dev/null", O_WRONLY, 0);
	/* hiredis sockets and eventfds are not all close-on-exec: close everything. */
	posix_spawn_file_actions_addclosefrom_np(&fa, STDERR_FILENO + 1);

	/*
	 * Own process group: a Ctrl-C on the worker's terminal reaches the
	 * worker alone, which then stops its builds in order.  SIGPIPE and
	 * the signals libev catches go back to their defaults.
	 */
	posix_spawnattr_init(&attr);
	sigemptyset(&none);
	sigfillset(&all);
	posix_spawnattr_setsigmask(&attr, &none);
	posix_spawnattr_setsigdefault(&attr, &all);
	posix_spawnattr_setpgroup(&attr, 0);
	posix_spawnattr_setflags(&attr,
	    POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETPGROUP);

	rc = posix_spawnp(&pid, argv[0], &fa, &attr, argv, envp ? envp : environ);
	posix_spawn_file_actions_destroy(&fa);
	posix_spawnattr_destroy(&attr);
	if (po[1] >= 0)
		close(po[1]);
	if (pe[1] >= 0)
		close(pe[1]);
	if (rc != 0) {
		snprintf(err, errlen, "cannot run %s: %s", argv[0], strerror(rc));
		if (po[0] >= 0)
			close(po[0]);
		if (pe[0] >= 0)
			close(pe[0]);
		return -1;
	}
	if (out_fd != NULL)
		*out_fd = po[0];
	if (err_fd != NULL)
		*err_fd = pe[0];
	return pid;
}

/*
 * Deferred frees.  An object whose watcher callback is running is not
 * freed there: it goes on this list, emptied by a prepare watcher before
 * the loop next blocks, when no callback of its can be on the stack.
 */
struct deferred {
	void (*fn)(void *);
	void *p;
	struct deferred *next;
};
static struct deferred *defer_list;
static ev_prepare defer_watcher;

/* Run every deferred free. */
static void
defer_run(EV_P_ ev_prepare *w, int revents)
{
	struct deferred *d;

	(void)loop;
	(void)w;
	(void)revents;
	while ((d = defer_list) != NULL) {
		defer_list = d->next;
		d->fn(d->p);
		free(d);
	}
}

/* Run what is still deferred (at exit, after the loop stopped). */
void
defer_flush(void)
{
	defer_run(EV_DEFAULT, &defer_watcher, 0);
}

/* Start the prepare watcher. */
void
defer_init(void)
{
	ev_prepare_init(&defer_watcher, defer_run);
	ev_prepare_start(EV_DEFAULT, &defer_watcher);
	ev_unref(EV_DEFAULT);	/* it alone does not keep the loop running */
}

/* Free p with fn before the loop next waits. */
void
defer_free(void (*fn)(void *), void *p)
{
	struct deferred *d = xmalloc(sizeof *d);

	d->fn = fn;
	d->p = p;
	d->next = defer_list;
	defer_list = d;
}

#define PROC_OUT_MAX (256 * 1024)
#define PROC_KILL_GRACE 2.0	/* SIGTERM to SIGKILL of a helper past its time */

/*
 * A helper process.  It ends when it is reaped and its stdout is at EOF,
 * or at its deadline: then its process group gets SIGTERM (sudo relays
 * that to the runtime it runs, which SIGKILL could not reach: the runtime
 * runs as root in sudo's process group), and PROC_KILL_GRACE later
 * SIGKILL.  Then done() is called without waiting any longer for the exit
 * or the EOF: a runtime left behind by a killed sudo may hold the pipe
 * for ever.  done() is called exactly once either way; libev still reaps
 * the pid when it exits, as it reaps every child.
 */
struct proc {
	ev_child child;
	ev_io io;
	ev_timer timer;
	pid_t pid;
	int fd;
	bool reaped, eof, killing, finished;
	int wstatus;
	char *out;
	size_t len;
	char *what;		/* argv for logs */
	double timeout;
	proc_done_cb *done;
	void *arg;
};

/* Free a finished helper. */
static void
proc_free(void *p)
{
	struct proc *pr = p;

	free(pr->out);
	free(pr->what);
	free(pr);
}

/* Report once, stop every watcher, free later. */
static void
proc_finish(struct proc *pr)
{
	if (pr->finished)
		return;
	pr->finished = true;
	ev_timer_stop(EV_DEFAULT, &pr->timer);
	ev_child_stop(EV_DEFAULT, &pr->child);
	if (pr->fd >= 0) {
		ev_io_stop(EV_DEFAULT, &pr->io);
		close(pr->fd);
		pr->fd = -1;
	}
	if (pr->done != NULL)
		pr->done(pr->wstatus, pr->out ? pr->out : "", pr->len, pr->arg);
	defer_free(proc_free, pr);
}

/* Report when both the exit and EOF are in. */
static void
proc_check(struct proc *pr)
{
	if (pr->reaped && pr->eof)
		proc_finish(pr);
}

/* The helper exited. */
static void
proc_child_cb(EV_P_ ev_child *w, int revents)
{
	struct proc *pr = w->data;

	(void)revents;
	ev_child_stop(loop, w);
	pr->reaped = true;
	pr->wstatus = w->rstatus;
	proc_check(pr);
}

/* The helper's stdout has data or EOF. */
static void
proc_read_cb(EV_P_ ev_io *w, int revents)
{
	struct proc *pr = w->data;
	char buf[8192];
	ssize_t n;

	(void)revents;
	while ((n = read(pr->fd, buf, sizeof buf)) > 0) {
		if (pr->len + (size_t)n + 1 > PROC_OUT_MAX)
			continue;	/* keep the head; the rest is read and ignored */
		pr->out = xrealloc(pr->out, pr->len + (size_t)n + 1);
		memcpy(pr->out + pr->len, buf, (size_t)n);
		pr->len += (size_t)n;
		pr->out[pr->len] = '\0';
	}
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	ev_io_stop(loop, w);
	close(pr->fd);
	pr->fd = -1;
	pr->eof = true;
	proc_check(pr);
}

/* The deadline: TERM the group, then KILL it and report. */
static void
proc_timer_cb(EV_P_ ev_timer *w, int revents)
{
	struct proc *pr = w->data;

	(void)loop;
	(void)revents;
	if (!pr->killing) {
		log_warn("helper %s (pid %d) still %s after %g s; stopping it", pr->what, (int)pr->pid,
		    pr->reaped ? "holds its output open" : "runs", pr->timeout);
		pr->killing = true;
		if (!pr->reaped)
			kill(-pr->pid, SIGTERM);
		ev_timer_set(w, pr->reaped ? 0.001 : PROC_KILL_GRACE, 0);
		ev_timer_start(EV_DEFAULT, w);
		return;
	}
	if (!pr->reaped) {
		kill(-pr->pid, SIGKILL);
		pr->wstatus = SIGKILL;	/* as waitpid() reports a SIGKILL */
	}
	proc_finish(pr);
}

/* argv as one line for logs (bounded). */
static char *
proc_describe(char *const argv[])
{
	char buf[256];
	size_t off = 0;

	buf[0] = '\0';
	for (size_t i = 0; argv[i] != NULL && off < sizeof buf - 1; i++)
		off += (size_t)snprintf(buf + off, sizeof buf - off, "%s%s", i ? " " : "", argv[i]);
	return xstrdup(buf);
}

/* Run a helper process without blocking the loop; see worker.h. */
void
proc_run_timeout(char *const argv[], double timeout, proc_done_cb *done, void *arg)
{
	struct proc *pr = xcalloc(1, sizeof *pr);
	char err[ERR_MAX];
	pid_t pid;

	pr->done = done;
	pr->arg = arg;
	pr->fd = -1;
	pr->timeout = timeout > 0 ? timeout : PROC_TIMEOUT;
	pr->what = proc_describe(argv);
	ev_timer_init(&pr->timer, proc_timer_cb, pr->timeout, 0);
	pr->timer.data = pr;
	if ((pid = spawn(argv, NULL, &pr->fd, NULL, err, sizeof err)) < 0) {
		log_warn("%s", err);
		pr->reaped = pr->eof = true;
		pr->wstatus = 127 << 8;
		proc_check(pr);
		return;
	}
	pr->pid = pid;
	ev_child_init(&pr->child, proc_child_cb, pid, 0);
	pr->child.data = pr;
	ev_child_start(EV_DEFAULT, &pr->child);
	ev_io_init(&pr->io, proc_read_cb, pr->fd, EV_READ);
	pr->io.data = pr;
	ev_io_start(EV_DEFAULT, &pr->io);
	ev_timer_start(EV_DEFAULT, &pr->timer);
}

/* The same with the default deadline. */
void
proc_run(char *const argv[], proc_done_cb *done, void *arg)
{
	proc_run_timeout(argv, PROC_TIMEOUT, done, arg);
}

/* Run argv to its end, blocking; collect up to outmax bytes of its stdout. */
int
proc_run_sync(char *const argv[], char **out, size_t outmax)
{
	char err[ERR_MAX], buf[4096];
	size_t len = 0;
	int fd, status;
	ssize_t n;
	pid_t pid;

	if ((pid = spawn(argv, NULL, &fd, NULL, err, sizeof err)) < 0) {
		log_err("%s", err);
		return 127 << 8;
	}
	if (out != NULL)
		*out = xcalloc(1, outmax + 1);
	fcntl(fd, F_SETFL, 0);	/* blocking: we wait for it here */
	while ((n = read(fd, buf, sizeof buf)) != 0) {
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			break;
		if (out != NULL && len < outmax) {
			size_t k = (size_t)n < outmax - len ? (size_t)n : outmax - len;
			memcpy(*out + len, buf, k);
			len += k;
		}
	}
	close(fd);
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	return status;
}
