/*
 * collect.c: the artifacts of a finished build, with their sha256.
 *
 * walk.c walks the output tree from descriptors (the build is hostile
 * and may rearrange it meanwhile); here the walk is driven and each
 * regular file it opens is hashed.
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
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "job.h"
#include "collect.h"

#define COLLECT_CHUNK (1 << 20)	/* bytes read per idle call, at most */
#define COLLECT_ENTRIES 64	/* directory entries handled per idle call, at most */

/* Order artifacts by name. */
static int
collect_cmp(const void *a, const void *b)
{
	return strcmp(((const struct artifact *)a)->name, ((const struct artifact *)b)->name);
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

/* Stop the watchers, close the file being read and every directory of the walk. */
static void
collect_stop(struct collect *co)
{
	ev_idle_stop(EV_DEFAULT, &co->idle);
	ev_timer_stop(EV_DEFAULT, &co->deadline);
	ev_timer_stop(EV_DEFAULT, &co->poll);
	collect_close_file(co);
	while (co->ndirs > 0)
		walk_pop(co);
}

/* Stop everything and tell the job; the list survives only a clean walk. */
static void
collect_finish(struct collect *co)
{
	char b[32];

	if (co->finished)
		return;
	co->finished = true;
	collect_stop(co);
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
		if (co->got > co->size && !walk_count_bytes(co, co->got - co->size - over))
			return -1;
		return n;
	}
	if (n < 0 && (err == EINTR || err == EAGAIN))
		return 0;
	if (n < 0) {
		walk_fail(co, "reading artifact %s: %s", co->name, strerror(err));
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
			if (co->buf == NULL)	/* at the first file: an empty output maps no 1 MiB */
				co->buf = xmalloc(COLLECT_CHUNK);
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
				walk_fail(co, "reading directory %s: %s",
				    co->dirs[co->ndirs - 1].rel[0] ? co->dirs[co->ndirs - 1].rel : ".", strerror(errno));
			walk_pop(co);
			continue;
		}
		entries--;
		walk_entry(co, de);
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
	walk_fail(co, "collecting the artifacts took longer than %.0f s", co->timeout);
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
	if (dir[0] != '\0' && walk_root(co, dir) == 0) {
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
	collect_stop(co);
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
