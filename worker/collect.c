/*
 * collect.c: the artifacts of a finished build, with their sha256.
 *
 * An ISO is hundreds of megabytes; hashing it in one go would stall every
 * other job's pipes and the heartbeat.  So the files are hashed a chunk
 * at a time from an idle watcher, which libev runs only when nothing else
 * is pending.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sha2.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "worker.h"

#define COLLECT_CHUNK (1 << 20)
#define COLLECT_MAX_FILES 10000
#define COLLECT_MAX_DEPTH 8

struct collect {
	ev_idle idle;
	struct job *job;
	void (*done)(struct job *);
	char *dir;
	struct artifact *arts;
	size_t n, cap;
	size_t cur;		/* file being hashed */
	int fd;
	SHA2_CTX ctx;
	char *buf;
};

/* Order artifacts by name. */
static int
collect_cmp(const void *a, const void *b)
{
	return strcmp(((const struct artifact *)a)->name, ((const struct artifact *)b)->name);
}

/* List the regular files below dir (relative names), not following symlinks. */
static void
collect_scan(struct collect *co, const char *rel, int depth)
{
	char *path = *rel ? xasprintf("%s/%s", co->dir, rel) : xstrdup(co->dir);
	struct dirent *de;
	DIR *d;

	if (depth > COLLECT_MAX_DEPTH || (d = opendir(path)) == NULL) {
		free(path);
		return;
	}
	while ((de = readdir(d)) != NULL && co->n < COLLECT_MAX_FILES) {
		char *name, *full;
		struct stat st;
		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		name = *rel ? xasprintf("%s/%s", rel, de->d_name) : xstrdup(de->d_name);
		full = xasprintf("%s/%s", co->dir, name);
		if (lstat(full, &st) == 0 && S_ISDIR(st.st_mode))
			collect_scan(co, name, depth + 1);
		else if (lstat(full, &st) == 0 && S_ISREG(st.st_mode)) {
			if (co->n == co->cap) {
				co->cap = co->cap ? co->cap * 2 : 8;
				co->arts = xrealloc(co->arts, co->cap * sizeof *co->arts);
			}
			memset(&co->arts[co->n], 0, sizeof co->arts[co->n]);
			co->arts[co->n].name = name;
			co->arts[co->n].size = (uint64_t)st.st_size;
			co->n++;
			name = NULL;
		}
		free(name);
		free(full);
	}
	closedir(d);
	free(path);
}

/* Hash one chunk; move to the next file at EOF; report when all are done. */
static void
collect_idle_cb(EV_P_ ev_idle *w, int revents)
{
	struct collect *co = w->data;
	ssize_t n;

	(void)revents;
	if (co->cur < co->n && co->fd < 0) {
		char *full = xasprintf("%s/%s", co->dir, co->arts[co->cur].name);
		co->fd = open(full, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
		free(full);
		if (co->fd < 0) {
			snprintf(co->arts[co->cur].sha256, sizeof co->arts[co->cur].sha256, "unreadable");
			co->cur++;
			return;
		}
		SHA256Init(&co->ctx);
		if (co->buf == NULL)
			co->buf = xmalloc(COLLECT_CHUNK);
	}
	if (co->cur < co->n) {
		n = read(co->fd, co->buf, COLLECT_CHUNK);
		if (n > 0) {
			SHA256Update(&co->ctx, (const uint8_t *)co->buf, (size_t)n);
			return;
		}
		if (n < 0 && errno == EINTR)
			return;
		SHA256End(&co->ctx, co->arts[co->cur].sha256);
		close(co->fd);
		co->fd = -1;
		co->cur++;
		if (co->cur < co->n)
			return;
	}
	ev_idle_stop(loop, w);
	co->done(co->job);
}

/* Start collecting dir for job j. */
struct collect *
collect_start(const char *dir, void (*done)(struct job *), struct job *j)
{
	struct collect *co = xcalloc(1, sizeof *co);

	co->job = j;
	co->done = done;
	co->dir = xstrdup(dir);
	co->fd = -1;
	if (dir[0] != '\0')
		collect_scan(co, "", 0);
	if (co->n > 1)
		qsort(co->arts, co->n, sizeof *co->arts, collect_cmp);
	ev_idle_init(&co->idle, collect_idle_cb);
	co->idle.data = co;
	ev_idle_start(EV_DEFAULT, &co->idle);
	return co;
}

/* Free the list (after the result is built). */
void
collect_free(struct collect *co)
{
	if (co == NULL)
		return;
	ev_idle_stop(EV_DEFAULT, &co->idle);
	if (co->fd >= 0)
		close(co->fd);
	for (size_t i = 0; i < co->n; i++)
		free(co->arts[i].name);
	free(co->arts);
	free(co->buf);
	free(co->dir);
	free(co);
}

/* How many artifacts. */
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
