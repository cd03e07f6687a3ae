/*
 * spawn_ceiling: the most a worker could dispatch on this machine.
 *
 * posix_spawn()s a program (default /bin/true) N times, keeping K children
 * at once (default 2, the dispatch benchmark's concurrency), with no queue
 * and no Redis: what is left is the kernel's fork/exec/exit/wait cost.
 * stdin, stdout and stderr go to /dev/null, as cheap as it gets; with -p
 * each child gets stdout and stderr pipes that are read to EOF, as the
 * worker does; with -w the children are also started the way worker/spawn.c
 * starts them (pipes, every signal reset to default, own process group,
 * every fd above 2 closed), to price those options.  Prints one line of
 * JSON: {"n", "concurrency", "seconds", "per_second", "self_us", "children_us"}
 * (CPU per spawn of this process and of the children).
 *
 * usage: spawn_ceiling [-n N] [-c K] [-p | -w] [program [args...]]
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static double
now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* One child: its pid and, with -p, the read ends of its pipes. */
struct child {
	pid_t pid;
	int out, err;
};

static int
start(char **argv, int pipes, int like_worker, struct child *c)
{
	posix_spawn_file_actions_t fa;
	posix_spawnattr_t attr, *ap = NULL;
	int po[2] = { -1, -1 }, pe[2] = { -1, -1 }, rc;

	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
	if (pipes) {
		if (pipe2(po, O_CLOEXEC) != 0 || pipe2(pe, O_CLOEXEC) != 0) {
			perror("pipe2");
			exit(1);
		}
		posix_spawn_file_actions_adddup2(&fa, po[1], 1);
		posix_spawn_file_actions_adddup2(&fa, pe[1], 2);
	} else {
		posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
		posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
	}
	if (like_worker) {
		sigset_t none, all;
		posix_spawn_file_actions_addclosefrom_np(&fa, 3);
		posix_spawnattr_init(&attr);
		sigemptyset(&none);
		sigfillset(&all);
		posix_spawnattr_setsigmask(&attr, &none);
		posix_spawnattr_setsigdefault(&attr, &all);
		posix_spawnattr_setpgroup(&attr, 0);
		posix_spawnattr_setflags(&attr,
		    POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETPGROUP);
		ap = &attr;
	}
	rc = like_worker ? posix_spawnp(&c->pid, argv[0], &fa, ap, argv, environ) :
	    posix_spawn(&c->pid, argv[0], &fa, ap, argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	if (ap != NULL)
		posix_spawnattr_destroy(ap);
	if (pipes) {
		close(po[1]);
		close(pe[1]);
	}
	c->out = po[0];
	c->err = pe[0];
	if (rc != 0) {
		fprintf(stderr, "spawn_ceiling: %s: %s\n", argv[0], strerror(rc));
		exit(1);
	}
	return 0;
}

/* Read a pipe to EOF and close it (the child exits right away). */
static void
drain(int fd)
{
	char buf[4096];

	if (fd < 0)
		return;
	while (read(fd, buf, sizeof buf) > 0)
		;
	close(fd);
}

int
main(int argc, char **argv)
{
	static char *def[] = { "/bin/true", NULL };
	long n = 2000, k = 2, started = 0, done = 0;
	int ch, pipes = 0, like_worker = 0;
	struct rusage ru_self, ru_kids;
	struct child *kids;
	char **prog;
	double t0, t1;

	while ((ch = getopt(argc, argv, "n:c:pw")) != -1) {
		switch (ch) {
		case 'n': n = atol(optarg); break;
		case 'c': k = atol(optarg); break;
		case 'p': pipes = 1; break;
		case 'w': pipes = like_worker = 1; break;
		default:
			fprintf(stderr, "usage: spawn_ceiling [-n N] [-c K] [-p | -w] [program [args...]]\n");
			return 2;
		}
	}
	if (n < 1 || k < 1)
		return 2;
	prog = optind < argc ? argv + optind : def;
	kids = calloc((size_t)k, sizeof *kids);
	t0 = now();
	for (long i = 0; i < k && started < n; i++, started++)
		start(prog, pipes, like_worker, &kids[i]);
	while (done < n) {
		int st;
		pid_t pid = waitpid(-1, &st, 0);
		if (pid < 0) {
			if (errno == EINTR)
				continue;
			perror("waitpid");
			return 1;
		}
		done++;
		for (long i = 0; i < k; i++) {
			if (kids[i].pid != pid)
				continue;
			drain(kids[i].out);
			drain(kids[i].err);
			kids[i].pid = 0;
			if (started < n) {
				start(prog, pipes, like_worker, &kids[i]);
				started++;
			}
			break;
		}
	}
	t1 = now();
	getrusage(RUSAGE_SELF, &ru_self);
	getrusage(RUSAGE_CHILDREN, &ru_kids);
#define US(tv) ((double)(tv).tv_sec * 1e6 + (double)(tv).tv_usec)
	printf("{\"n\": %ld, \"concurrency\": %ld, \"pipes\": %s, \"like_worker\": %s, \"seconds\": %.6f, "
	    "\"per_second\": %.1f, \"self_us\": %.1f, \"children_us\": %.1f}\n",
	    n, k, pipes ? "true" : "false", like_worker ? "true" : "false", t1 - t0, (double)n / (t1 - t0),
	    (US(ru_self.ru_utime) + US(ru_self.ru_stime)) / (double)n,
	    (US(ru_kids.ru_utime) + US(ru_kids.ru_stime)) / (double)n);
	return 0;
}
