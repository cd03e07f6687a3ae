/*
 * collect.c: the artifacts of a finished build, with their sha256.
 *
 * The build is hostile and may rearrange its output tree while we walk
 * it (in exec mode, or from a process that outlived it).  So the tree is
 * walked from file descriptors, never by path: each directory is opened
 * with openat(parent, name, O_DIRECTORY | O_NOFOLLOW) and each file with
 * openat(parent, name, O_PATH | O_NOFOLLOW); fstat() on that descriptor
 * decides, and only a regular file is reopened for reading (through
 * /proc/self/fd, which names the inode just checked, so a rename in
 * between cannot slip a FIFO or a device under the read).  Symlinks,
 * FIFOs, sockets, devices and other filesystems' mount points are never
 * opened for reading and are not listed.
 *
 * An ISO is hundreds of megabytes and an output may hold many thousands
 * of files, so the work is done from an idle watcher, one slice per loop
 * turn, at most COLLECT_CHUNK bytes read and COLLECT_ENTRIES directory
 * entries per slice: heartbeats and the other jobs' pipes go on meanwhile.  The walk is capped (collect_max_files,
 * _bytes, _depth in worker.ini), has a deadline, and stops when the job
 * is cancelled.  When it cannot list every artifact truthfully the list
 * is dropped and collect_outcome() says why; a sha256 is only ever the
 * hash of every byte read up to end of file.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sha2.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "job.h"

#define COLLECT_CHUNK (1 << 20)	/* bytes read per idle call, at most */
#define COLLECT_ENTRIES 64	/* directory entries handled per idle call, at most */

/* A directory being read: one per level from the output dir down. */
struct collect_dir {
	DIR *d;
	char *rel;		/* its name relative to the output dir ("" for it) */
	int depth;		/* 0 for the output dir */
};

struct collect {
	ev_idle idle;
	ev_timer deadline;
	ev_timer poll;		/* asks Redis whether the job was cancelled */
	struct job *job;
	void (*done)(struct job *);
	dev_t dev;		/* the output dir's filesystem */
	struct collect_dir *dirs;
	size_t ndirs, dirs_cap;
	struct artifact *arts;
	size_t n, cap;
	size_t entries;		/* directory entries seen, of every type */
	uint64_t bytes;		/* st_size of the regular files so far, or more if they grew */
	/* the file being hashed */
	int fd;
	char *name;
	uint64_t size, got;	/* st_size when opened, bytes hashed */
	SHA2_CTX ctx;
	char *buf;
	double timeout;
	double started;		/* now_mono() at the start */
	unsigned long slices;	/* idle calls so far */
	bool finished;
	bool cancelled;
	char error[ERR_MAX];
};

/* Order artifacts by name. */
static int
collect_cmp(const void *a, const void *b)
{
	return strcmp(((const struct artifact *)a)->name, ((const struct artifact *)b)->name);
}

/* Fail the walk with a message (the first one wins). */
static void __attribute__((format(printf, 2, 3)))
collect_fail(struct collect *co, const char *fmt, ...)
{
	va_list ap;

	if (co->error[0] != '\0')
		return;
	va_start(ap, fmt);
	vsnprintf(co->error, sizeof co->error, fmt, ap);
	va_end(ap);
}

/* Close the file being hashed, if any. */
static void
collect_close_file(struct collect *co)
{
	if (co->fd >= 0)
		close(co->fd);
	co->fd = -1;
	free(co->name);
	co->name = NULL;
}

/* Drop the innermost open directory. */
static void
collect_pop(struct collect *co)
{
	struct collect_dir *cd = &co->dirs[--co->ndirs];

	closedir(cd->d);
	free(cd->rel);
}

/* Stop everything and tell the job; the list survives only a clean walk. */
static void
collect_finish(struct collect *co)
{
	char b[32];

	if (co->finished)
		return;
	co->finished = true;
	ev_idle_stop(EV_DEFAULT, &co->idle);
	ev_timer_stop(EV_DEFAULT, &co->deadline);
	ev_timer_stop(EV_DEFAULT, &co->poll);
	collect_close_file(co);
	while (co->ndirs > 0)
		collect_pop(co);
	if (co->cancelled || co->error[0] != '\0') {
		for (size_t i = 0; i < co->n; i++)
			free(co->arts[i].name);
		co->n = 0;
	} else if (co->n > 1)
		qsort(co->arts, co->n, sizeof *co->arts, collect_cmp);
	free(co->buf);
	co->buf = NULL;
	if (co->dirs != NULL || co->error[0] != '\0')	/* not for a job that never ran */
		log_msg(co->error[0] ? LOG_WARN : LOG_INFO, "job %s: %zu artifacts, %s by size, in %.2f s "
		    "(%lu slices)%s%s", co->job->id, co->n,
		    fmt_bytes(co->bytes, b, sizeof b), now_mono() - co->started, co->slices,
		    co->cancelled ? ", cancelled" : co->error[0] ? ": " : "", co->error);
	co->done(co->job);
}

/* name below the directory rel, as listed. */
static char *
collect_join(const char *rel, const char *name)
{
	return *rel ? xasprintf("%s/%s", rel, name) : xstrdup(name);
}

/* Count bytes against collect_max_bytes; false (and the error) when over. */
static bool
collect_count_bytes(struct collect *co, uint64_t add)
{
	uint64_t max = wk->conf->collect_max_bytes;
	char b[32];

	if (add > max || co->bytes > max - add) {
		collect_fail(co, "output has more than %s of files (collect_max_bytes)",
		    fmt_bytes(max, b, sizeof b));
		return false;
	}
	co->bytes += add;
	return true;
}

/* Open the directory name (below the innermost one) and descend into it. */
static void
collect_enter(struct collect *co, int parent, const char *name, const char *rel, int depth)
{
	struct stat st;
	DIR *d;
	int fd;

	if (depth > wk->conf->collect_max_depth) {
		collect_fail(co, "output has directories nested more than %ld deep (collect_max_depth)",
		    wk->conf->collect_max_depth);
		return;
	}
	fd = openat(parent, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0) {
		if (errno != ENOENT && errno != ENOTDIR && errno != ELOOP)	/* gone or swapped: skip */
			collect_fail(co, "reading directory %s: %s", rel, strerror(errno));
		return;
	}
	if (fstat(fd, &st) != 0 || !S_ISDIR(st.st_mode) || st.st_dev != co->dev) {
		close(fd);	/* a mount point: not ours to walk */
		return;
	}
	if ((d = fdopendir(fd)) == NULL) {
		collect_fail(co, "reading directory %s: %s", rel, strerror(errno));
		close(fd);
		return;
	}
	if (co->ndirs == co->dirs_cap) {
		co->dirs_cap = co->dirs_cap ? co->dirs_cap * 2 : 8;
		co->dirs = xrealloc(co->dirs, co->dirs_cap * sizeof *co->dirs);
	}
	co->dirs[co->ndirs].d = d;
	co->dirs[co->ndirs].rel = xstrdup(rel);
	co->dirs[co->ndirs].depth = depth;
	co->ndirs++;
}

/*
 * Open the file name for hashing if it is a regular file.  O_PATH opens
 * nothing (no FIFO blocks, no device driver runs); the fstat() of that
 * descriptor is the check, and the reopen through /proc/self/fd reads
 * exactly the inode checked, whatever the name points at by then.
 */
static void
collect_open(struct collect *co, int parent, const char *name, const char *rel)
{
	char proc[64];
	struct stat st;
	int pfd, fd;

	if ((pfd = openat(parent, name, O_PATH | O_NOFOLLOW | O_CLOEXEC)) < 0) {
		if (errno != ENOENT)
			collect_fail(co, "reading artifact %s: %s", rel, strerror(errno));
		return;
	}
	if (fstat(pfd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_dev != co->dev) {
		close(pfd);	/* a symlink, FIFO, socket, device, or a mount: skipped */
		return;
	}
	if (!collect_count_bytes(co, (uint64_t)st.st_size)) {	/* a sparse file counts by its size */
		close(pfd);
		return;
	}
	snprintf(proc, sizeof proc, "/proc/self/fd/%d", pfd);
	fd = open(proc, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
	close(pfd);
	if (fd < 0 && errno == ENOENT) {
		/* No /proc: open the name again, and read it only if it is still that file. */
		struct stat again;
		fd = openat(parent, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
		if (fd >= 0 && (fstat(fd, &again) != 0 || again.st_dev != st.st_dev ||
		    again.st_ino != st.st_ino)) {
			close(fd);
			return;	/* swapped in between: skipped */
		}
		if (fd < 0 && (errno == ENOENT || errno == ELOOP || errno == ENXIO))
			return;	/* gone, now a symlink or a socket: skipped */
	}
	if (fd < 0) {
		collect_fail(co, "reading artifact %s: %s", rel, strerror(errno));
		return;
	}
	co->fd = fd;
	co->name = xstrdup(rel);
	co->size = (uint64_t)st.st_size;
	co->got = 0;
	SHA256Init(&co->ctx);
}

/* One directory entry of the innermost directory. */
static void
collect_entry(struct collect *co, const struct dirent *de)
{
	struct collect_dir *cd = &co->dirs[co->ndirs - 1];
	int parent = dirfd(cd->d), depth = cd->depth + 1;
	unsigned char type = de->d_type;
	char *rel;
	struct stat st;

	if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
		return;
	if (++co->entries > (size_t)wk->conf->collect_max_files) {
		collect_fail(co, "output has more than %ld files (collect_max_files)",
		    wk->conf->collect_max_files);
		return;
	}
	if (type == DT_UNKNOWN) {
		/* Some filesystems do not say: ask, without following. */
		if (fstatat(parent, de->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0)
			return;
		type = S_ISDIR(st.st_mode) ? DT_DIR : S_ISREG(st.st_mode) ? DT_REG : DT_LNK;
	}
	if (type != DT_DIR && type != DT_REG)
		return;	/* never opened: the fstat below would skip it anyway */
	rel = collect_join(cd->rel, de->d_name);
	if (type == DT_DIR)
		collect_enter(co, parent, de->d_name, rel, depth);	/* may move co->dirs */
	else
		collect_open(co, parent, de->d_name, rel);
	free(rel);
}

/*
 * What one read() of the file being hashed means: n bytes (hashed), end
 * of file (the artifact is complete), or an error, which fails the walk
 * rather than record the hash of what came before it.  Returns the bytes
 * consumed, 0 to come back later, -1 when the walk failed.
 */
static ssize_t
collect_read_result(struct collect *co, ssize_t n, int err)
{
	struct artifact *a;

	if (n > 0) {
		uint64_t over = co->got > co->size ? co->got - co->size : 0;
		SHA256Update(&co->ctx, (const uint8_t *)co->buf, (size_t)n);
		co->got += (uint64_t)n;
		/* It grew since fstat (or lied about its size): count what is beyond. */
		if (co->got > co->size && !collect_count_bytes(co, co->got - co->size - over))
			return -1;
		return n;
	}
	if (n < 0 && (err == EINTR || err == EAGAIN))
		return 0;
	if (n < 0) {
		collect_fail(co, "reading artifact %s: %s", co->name, strerror(err));
		return -1;
	}
	if (co->n == co->cap) {
		co->cap = co->cap ? co->cap * 2 : 16;
		co->arts = xrealloc(co->arts, co->cap * sizeof *co->arts);
	}
	a = &co->arts[co->n++];
	memset(a, 0, sizeof *a);
	SHA256End(&co->ctx, a->sha256);
	a->size = co->got;	/* the bytes the sha256 is of */
	a->name = co->name;
	co->name = NULL;
	collect_close_file(co);
	return 0;
}

/* A bounded slice of the walk: read, hash, list; finish at the end. */
static void
collect_idle_cb(EV_P_ ev_idle *w, int revents)
{
	struct collect *co = w->data;
	size_t budget = COLLECT_CHUNK;
	int entries = COLLECT_ENTRIES;
	struct dirent *de;
	ssize_t n;

	(void)loop;
	(void)revents;
	co->slices++;
	while (!co->cancelled && co->error[0] == '\0' && entries > 0 && budget > 0) {
		if (co->fd >= 0) {
			n = read(co->fd, co->buf, budget);
			n = collect_read_result(co, n, errno);
			if (n == 0 && co->fd >= 0)
				break;	/* EINTR, EAGAIN: come back */
			if (n > 0)
				budget -= (size_t)n;
			continue;
		}
		if (co->ndirs == 0)
			break;	/* all done */
		errno = 0;
		if ((de = readdir(co->dirs[co->ndirs - 1].d)) == NULL) {
			if (errno != 0)
				collect_fail(co, "reading directory %s: %s",
				    co->dirs[co->ndirs - 1].rel[0] ? co->dirs[co->ndirs - 1].rel : ".", strerror(errno));
			collect_pop(co);
			continue;
		}
		entries--;
		collect_entry(co, de);
	}
	if (co->cancelled || co->error[0] != '\0' || (co->ndirs == 0 && co->fd < 0))
		collect_finish(co);
}

/* The walk's deadline passed. */
static void
collect_deadline_cb(EV_P_ ev_timer *w, int revents)
{
	struct collect *co = w->data;

	(void)loop;
	(void)revents;
	collect_fail(co, "collecting the artifacts took longer than %.0f s", co->timeout);
	collect_finish(co);
}

static void (*collect_polled)(struct job *, enum emit_answer);

/* Where the cancel poll's answers go (job.c's, as an event's). */
void
collect_init(void (*polled)(struct job *j, enum emit_answer a))
{
	collect_polled = polled;
}

/* HEXISTS's answer: a cancel asked while we collect. */
static void
collect_poll_reply(redisReply *r, void *arg)
{
	struct job *j = arg;
	bool cancel = r != NULL && r->type == REDIS_REPLY_INTEGER && r->integer == 1;

	if (collect_polled != NULL)
		collect_polled(j, cancel ? EMIT_CANCEL : EMIT_SENT);
}

/*
 * Ask whether the job was cancelled, as the stats events do while it
 * runs.  The command holds the job like an event does (j->emits): the
 * job is not freed before it is answered.
 */
static void
collect_poll_cb(EV_P_ ev_timer *w, int revents)
{
	struct collect *co = w->data;
	const char *argv[3] = { "HEXISTS", wk->keys.cancel, co->job->id };

	(void)loop;
	(void)revents;
	co->job->emits++;
	rconn_send(wk->cmd, RQ_ONCE, collect_poll_reply, co->job, 3, argv, NULL);
}

/*
 * Open the output dir itself: not through a symlink, no FIFO to block on.
 * Gone is no artifacts; anything else that is not a directory fails.
 */
static int
collect_root(struct collect *co, const char *dir)
{
	struct stat st;
	DIR *d;
	int fd, nofollow;

	/*
	 * The worker's own held descriptor (paths_collect_dir() names it as
	 * /proc/self/fd/N) is a magic link that must be followed: it is the
	 * directory the worker opened beneath builds_root, not the build's.
	 */
	nofollow = strncmp(dir, "/proc/self/fd/", 14) == 0 ? 0 : O_NOFOLLOW;
	if ((fd = open(dir, O_RDONLY | O_DIRECTORY | nofollow | O_NONBLOCK | O_CLOEXEC)) < 0) {
		if (errno != ENOENT)
			collect_fail(co, "reading the output directory: %s", strerror(errno));
		return -1;
	}
	if (fstat(fd, &st) != 0 || (d = fdopendir(fd)) == NULL) {
		collect_fail(co, "reading the output directory: %s", strerror(errno));
		close(fd);
		return -1;
	}
	co->dev = st.st_dev;
	co->dirs_cap = 8;
	co->dirs = xcalloc(co->dirs_cap, sizeof *co->dirs);
	co->dirs[0].d = d;
	co->dirs[0].rel = xstrdup("");
	co->ndirs = 1;
	return 0;
}

/*
 * Start collecting dir for job j ("" collects nothing).  The deadline is
 * what is left of the job's timeout, but at least collect_timeout.
 */
struct collect *
collect_start(const char *dir, void (*done)(struct job *), struct job *j)
{
	const struct config *c = wk->conf;
	struct collect *co = xcalloc(1, sizeof *co);
	double left = j->started_mono > 0 ? j->spec.timeout - (now_mono() - j->started_mono) : 0;

	co->job = j;
	co->done = done;
	co->fd = -1;
	co->started = now_mono();
	co->timeout = left > c->collect_timeout ? left : c->collect_timeout;
	ev_idle_init(&co->idle, collect_idle_cb);
	co->idle.data = co;
	/*
	 * Above the pipes and timers: an idle watcher of their priority runs
	 * only when none of them is pending, so a job flooding its output
	 * would starve the walk into its deadline.  One priority up, it runs
	 * once per loop turn, beside everything else (which a slice is small
	 * enough not to delay).
	 */
	ev_set_priority(&co->idle, 1);
	ev_timer_init(&co->deadline, collect_deadline_cb, co->timeout, 0);
	co->deadline.data = co;
	ev_timer_init(&co->poll, collect_poll_cb, c->stats_interval, c->stats_interval);
	co->poll.data = co;
	if (dir[0] != '\0' && collect_root(co, dir) == 0) {
		co->buf = xmalloc(COLLECT_CHUNK);
		ev_timer_start(EV_DEFAULT, &co->deadline);
		if (wk->cmd != NULL)
			ev_timer_start(EV_DEFAULT, &co->poll);
	}
	ev_idle_start(EV_DEFAULT, &co->idle);
	return co;
}

/* Stop the walk at its next slice: the job was cancelled. */
void
collect_cancel(struct collect *co)
{
	if (co == NULL || co->finished)
		return;
	co->cancelled = true;
	ev_idle_start(EV_DEFAULT, &co->idle);
}

/*
 * The job's status once collected: a cancel wins; a walk that failed
 * turns a success into error (and adds its reason to any other status's
 * error); else the status stands.
 */
enum status
collect_outcome(const struct collect *co, enum status st, char *err, size_t errlen)
{
	size_t len;

	if (co == NULL)
		return st;
	if (co->cancelled) {
		snprintf(err, errlen, "cancelled while collecting the artifacts");
		return ST_CANCELLED;
	}
	if (co->error[0] == '\0')
		return st;
	len = strlen(err);
	if (st == ST_SUCCEEDED || len == 0) {
		snprintf(err, errlen, "%s", co->error);
		return ST_ERROR;
	}
	snprintf(err + len, errlen - len, "; %s", co->error);
	return st;
}

/* Why the walk failed, or NULL. */
const char *
collect_error(const struct collect *co)
{
	return co->error[0] ? co->error : NULL;
}

/* Free the walk (after the result is built). */
void
collect_free(struct collect *co)
{
	if (co == NULL)
		return;
	ev_idle_stop(EV_DEFAULT, &co->idle);
	ev_timer_stop(EV_DEFAULT, &co->deadline);
	ev_timer_stop(EV_DEFAULT, &co->poll);
	collect_close_file(co);
	while (co->ndirs > 0)
		collect_pop(co);
	free(co->dirs);
	for (size_t i = 0; i < co->n; i++)
		free(co->arts[i].name);
	free(co->arts);
	free(co->buf);
	free(co);
}

/* How many artifacts (0 when the walk failed). */
size_t
collect_count(const struct collect *co)
{
	return co->n;
}

/* The i-th artifact, by name order. */
const struct artifact *
collect_get(const struct collect *co, size_t i)
{
	return &co->arts[i];
}
