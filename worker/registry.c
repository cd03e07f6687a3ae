/*
 * registry.c: the directories that running jobs hold, host-wide.
 *
 * paths.c keeps two jobs of one worker from sharing or nesting an output
 * (or one's output being another's profile).  Workers are often several
 * on a host (debate-worker@1, @2...), on one builds_root; this file makes
 * the same check across them.
 *
 * The registry is builds_root/jobs/.held/: jobs/ is the worker's own tree
 * (no producer names anything in it, no build sees more than its own
 * leaf, and no job id starts with a dot), so only workers write there.
 * Each worker has one file in it, "<pid>.<random>", which it opens once,
 * holds flock(LOCK_EX) on for its whole life, and rewrites whole with the
 * directories its jobs named:
 *
 *	worker <worker id>
 *	<ns> <job id> <o|p> <dev>:<ino> <dev>:<ino> ...	(the directory, then its parents)
 *
 * A file whose lock can be taken belongs to a worker that is gone (the
 * kernel dropped its lock with its last descriptor): the reader deletes
 * it.  Checking and recording happen under flock(LOCK_EX) of the .held
 * directory itself, so two workers cannot both find a directory free and
 * both take it.  That lock is held for a directory read and a few small
 * files, never across anything slow; a worker that cannot have it within
 * REGISTRY_WAIT refuses the job rather than run it unchecked.
 *
 * Invariant (why recorded parents stay true): a build can rename only
 * inside its own output, and no held directory nests with a running
 * output on this host, so no build can move a held directory's parents;
 * only an operator can.  The directory itself is held open by its worker,
 * so its inode is not reused while its entry lives.
 *
 * The same job (namespace and id) on another worker is not a clash: that
 * is a stale attempt whose lease was taken over (the reaper requeued it);
 * its worker stops it when it learns.  A second payload under a running
 * job's id never runs: the claim dead-letters it as duplicate_id.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "worker.h"

#define REGISTRY_DIR ".held"
#define REGISTRY_WAIT_MS 2000		/* longest wait for the registry's lock */
#define REGISTRY_FILE_MAX (1 << 20)	/* a worker's file, read at most this far */

struct registry_entry {
	unsigned handle;
	char *line;			/* "<ns> <job id> <o|p> <dev>:<ino> ...\n", formatted once */
	size_t len;
};

static struct {
	char root[PATH_MAX];		/* builds_root as configured when opened */
	int dirfd;			/* builds_root/jobs/.held, or -1 */
	int ownfd;			/* our file, locked for life */
	char own[64];			/* its name */
	struct registry_entry *v;
	size_t n, cap;
	unsigned next;
	bool dirty;			/* the file lags behind v */
	size_t reserved;		/* bytes fallocate()d for our file */
} reg = { .dirfd = -1, .ownfd = -1 };

/* mkdirat (an existing one is fine), then open it without following a symlink. */
static int
registry_step(int dfd, const char *name, mode_t mode)
{
	if (mkdirat(dfd, name, mode) != 0 && errno != EEXIST)
		return -1;
	return openat(dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
}

/* Remove our file at exit: the others would delete it anyway, once they see its lock free. */
static void
registry_atexit(void)
{
	if (reg.dirfd >= 0 && reg.ownfd >= 0)
		unlinkat(reg.dirfd, reg.own, 0);
}

/* Close what is open (builds_root changed, or opening failed halfway). */
static void
registry_close(void)
{
	if (reg.ownfd >= 0) {
		unlinkat(reg.dirfd, reg.own, 0);
		close(reg.ownfd);
	}
	if (reg.dirfd >= 0)
		close(reg.dirfd);
	reg.dirfd = reg.ownfd = -1;
	reg.root[0] = '\0';
}

/* Open builds_root/jobs/.held and make our locked file in it, once per builds_root. */
static int
registry_open(char *err, size_t errlen)
{
	static bool atexit_set;
	const char *root = wk->conf->builds_root;
	int rootfd, jfd;
	unsigned char rnd[6];
	char tmp[80];

	if (reg.dirfd >= 0 && strcmp(reg.root, root) == 0)
		return 0;
	registry_close();
	if ((rootfd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0) {
		snprintf(err, errlen, "builds_root %s: %s", root, strerror(errno));
		return -1;
	}
	jfd = registry_step(rootfd, JOBS_DIR, 0755);
	close(rootfd);
	if (jfd < 0 || (reg.dirfd = registry_step(jfd, REGISTRY_DIR, 0755)) < 0) {
		snprintf(err, errlen, "the host's registry of held directories, builds_root/%s/%s: %s",
		    JOBS_DIR, REGISTRY_DIR, errno == ELOOP || errno == ENOTDIR ?
		    "a symlink or not a directory (refused, not followed)" : strerror(errno));
		if (jfd >= 0)
			close(jfd);
		return -1;
	}
	close(jfd);
	if (getrandom(rnd, sizeof rnd, 0) != (ssize_t)sizeof rnd)
		memset(rnd, 0, sizeof rnd);
	snprintf(reg.own, sizeof reg.own, "%ld.%02x%02x%02x%02x%02x%02x", (long)getpid(),
	    rnd[0], rnd[1], rnd[2], rnd[3], rnd[4], rnd[5]);
	/*
	 * Made under a dot name (readers skip those) and locked before it
	 * gets its real name: a reader never finds it unlocked and deletes
	 * it as a dead worker's.
	 */
	snprintf(tmp, sizeof tmp, ".new.%s", reg.own);
	reg.ownfd = openat(reg.dirfd, tmp, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
	if (reg.ownfd < 0 || flock(reg.ownfd, LOCK_EX | LOCK_NB) != 0 ||
	    renameat(reg.dirfd, tmp, reg.dirfd, reg.own) != 0) {
		if (reg.ownfd >= 0)
			unlinkat(reg.dirfd, tmp, 0);
		snprintf(err, errlen, "the host's registry of held directories, builds_root/%s/%s/%s: %s",
		    JOBS_DIR, REGISTRY_DIR, reg.own, strerror(errno));
		registry_close();
		return -1;
	}
	snprintf(reg.root, sizeof reg.root, "%s", root);
	reg.dirty = true;
	reg.reserved = 0;
	if (!atexit_set) {
		atexit(registry_atexit);
		atexit_set = true;
	}
	return 0;
}

/* flock(LOCK_EX) of the registry, waiting at most REGISTRY_WAIT_MS; 0 when held. */
static int
registry_lock(char *err, size_t errlen)
{
	struct timespec ts = { 0, 1000000 };

	for (int ms = 0; ; ms++) {
		if (flock(reg.dirfd, LOCK_EX | LOCK_NB) == 0)
			return 0;
		if (errno != EWOULDBLOCK && errno != EINTR) {
			snprintf(err, errlen, "cannot lock the host's registry of held directories: %s",
			    strerror(errno));
			return -1;
		}
		if (ms >= REGISTRY_WAIT_MS) {
			snprintf(err, errlen, "the host's registry of held directories (builds_root/%s/%s) "
			    "stayed locked by another worker for %d ms", JOBS_DIR, REGISTRY_DIR, REGISTRY_WAIT_MS);
			return -1;
		}
		nanosleep(&ts, NULL);
	}
}

/*
 * Rewrite our file from v, under the lock; 0, or -1 with errno.
 *
 * A build can fill the filesystem builds_root is on, and this file is on
 * it: a write that fails must never leave others seeing less than we
 * hold.  So the file's blocks are reserved ahead (fallocate with
 * KEEP_SIZE, grown before a longer write, which fails instead), the new
 * text is written over the old, and only then is the file cut to its
 * length: a write that fails midway leaves old lines behind, which only
 * ever show more directories held, never fewer.
 */
static int
registry_write(void)
{
	char *buf, *p;
	size_t len;
	int rc = 0;

	/* Every line was formatted when it was added: a write only joins them. */
	len = strlen("worker ") + strlen(wk->id) + 1;
	for (size_t i = 0; i < reg.n; i++)
		len += reg.v[i].len;
	buf = xmalloc(len + 1);
	p = buf + sprintf(buf, "worker %s\n", wk->id);
	for (size_t i = 0; i < reg.n; i++) {
		memcpy(p, reg.v[i].line, reg.v[i].len);
		p += reg.v[i].len;
	}
	if (len > reg.reserved) {
		off_t want = (off_t)(len * 2 > 65536 ? len * 2 : 65536);
		if (fallocate(reg.ownfd, FALLOC_FL_KEEP_SIZE, 0, want) == 0)
			reg.reserved = (size_t)want;
		else if (errno != EOPNOTSUPP) {
			rc = -1;
			goto out;
		}
	}
	if (pwrite(reg.ownfd, buf, len, 0) != (ssize_t)len || ftruncate(reg.ownfd, (off_t)len) != 0)
		rc = -1;
out:
	reg.dirty = rc != 0;
	if (rc != 0) {
		int saved = errno;	/* the caller names it */
		log_warn("cannot write the host's registry of held directories: %s", strerror(saved));
		errno = saved;
	}
	free(buf);
	return rc;
}

/* Parse "dev:ino dev:ino ..." into pd's chain; false on anything else. */
static bool
registry_parse_chain(char *s, struct path_dir *pd)
{
	char *tok, *save = NULL;

	pd->fd = -1;
	pd->depth = 0;
	pd->chain = NULL;
	pd->real[0] = '\0';
	for (tok = strtok_r(s, " ", &save); tok != NULL; tok = strtok_r(NULL, " ", &save)) {
		unsigned long long dev, ino;
		char end;

		if (sscanf(tok, "%llu:%llu%c", &dev, &ino, &end) != 2 || pd->depth >= PATH_MAX / 2)
			break;
		pd->chain = xrealloc(pd->chain, (pd->depth + 1) * sizeof *pd->chain);
		pd->chain[pd->depth].dev = (dev_t)dev;
		pd->chain[pd->depth].ino = (ino_t)ino;
		pd->depth++;
	}
	if (tok != NULL || pd->depth == 0) {
		free(pd->chain);
		pd->chain = NULL;
		pd->depth = 0;
		return false;
	}
	return true;
}

/* The candidate's directories against one line of another worker's file; names the clash in err. */
static bool
registry_clash_line(char *line, const char *wid, const char *ns, const char *job_id,
    const struct path_dir *prof, const char *prof_name, const struct path_dir *out, const char *out_name,
    char *err, size_t errlen)
{
	char *lns, *ljob, *lkind, *save = NULL;
	struct path_dir held;
	bool clash = false;

	if ((lns = strtok_r(line, " ", &save)) == NULL || (ljob = strtok_r(NULL, " ", &save)) == NULL ||
	    (lkind = strtok_r(NULL, " ", &save)) == NULL || (strcmp(lkind, "o") != 0 && strcmp(lkind, "p") != 0) ||
	    !registry_parse_chain(save, &held))
		return false;
	/* The same job elsewhere is its stale attempt, not another job. */
	if (strcmp(lns, ns) == 0 && strcmp(ljob, job_id) == 0) {
		path_close(&held);
		return false;
	}
	if (out != NULL && path_nested(out, &held)) {
		snprintf(err, errlen, "output: \"%s\" overlaps running job %s's %s (on worker %s, this host)",
		    out_name, ljob, *lkind == 'o' ? "output" : "profile", wid);
		clash = true;
	} else if (prof != NULL && *lkind == 'o' && path_nested(prof, &held)) {
		snprintf(err, errlen, "profile: \"%s\" overlaps running job %s's output (on worker %s, this host)",
		    prof_name, ljob, wid);
		clash = true;
	}
	free(held.chain);
	return clash;
}

/*
 * Read another worker's file: gone (its lock is free) means delete it;
 * else check each line.  true with err on a clash.
 */
static bool
registry_clash_file(const char *name, const char *ns, const char *job_id, const struct path_dir *prof,
    const char *prof_name, const struct path_dir *out, const char *out_name, char *err, size_t errlen)
{
	char wid[ID_MAX + 64] = "?", *buf, *line, *save = NULL;
	struct stat st;
	bool clash = false;
	ssize_t n;
	int fd;

	if ((fd = openat(reg.dirfd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC)) < 0)
		return false;
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
		close(fd);
		return false;
	}
	if (flock(fd, LOCK_SH | LOCK_NB) == 0) {
		/* Its worker is gone: nothing it named is held any more. */
		unlinkat(reg.dirfd, name, 0);
		close(fd);
		return false;
	}
	buf = xmalloc(REGISTRY_FILE_MAX + 1);
	n = pread(fd, buf, REGISTRY_FILE_MAX, 0);
	close(fd);
	buf[n > 0 ? n : 0] = '\0';
	for (line = strtok_r(buf, "\n", &save); line != NULL && !clash; line = strtok_r(NULL, "\n", &save)) {
		if (strncmp(line, "worker ", 7) == 0)
			snprintf(wid, sizeof wid, "%s", line + 7);
		else
			clash = registry_clash_line(line, wid, ns, job_id, prof, prof_name, out, out_name, err, errlen);
	}
	free(buf);
	return clash;
}

/* Add one of our entries (its line formatted now). */
static void
registry_add(unsigned handle, const char *ns, const char *job_id, char kind, const struct path_dir *pd)
{
	struct registry_entry *e;
	char *p;

	if (reg.n == reg.cap) {
		reg.cap = reg.cap ? reg.cap * 2 : 8;
		reg.v = xrealloc(reg.v, reg.cap * sizeof *reg.v);
	}
	e = &reg.v[reg.n++];
	e->handle = handle;
	/* ns and id are [A-Za-z0-9_.-]; each dev:ino is at most 41 bytes */
	e->line = p = xmalloc(strlen(ns) + strlen(job_id) + 5 + pd->depth * 42 + 2);
	p += sprintf(p, "%s %s %c", ns, job_id, kind);
	for (size_t k = 0; k < pd->depth; k++) {
		*p++ = ' ';
		p = fmt_uint(p, (uint64_t)pd->chain[k].dev);
		*p++ = ':';
		p = fmt_uint(p, (uint64_t)pd->chain[k].ino);
	}
	*p++ = '\n';
	*p = '\0';
	e->len = (size_t)(p - e->line);
}

/* Remove handle's entries from v. */
static void
registry_forget(unsigned handle)
{
	size_t k = 0;

	for (size_t i = 0; i < reg.n; i++) {
		if (reg.v[i].handle == handle)
			free(reg.v[i].line);
		else
			reg.v[k++] = reg.v[i];
	}
	reg.n = k;
}

/* Check against every other worker on this host, then record; see worker.h. */
int
registry_take(const char *job_id, const struct path_dir *prof, const char *prof_name,
    const struct path_dir *out, const char *out_name, unsigned *handle, char *err, size_t errlen)
{
	const char *ns = wk->conf->namespace;
	struct dirent *de;
	bool clash = false;
	DIR *d;
	int dfd;

	*handle = 0;
	if (prof != NULL && prof->chain == NULL)
		prof = NULL;
	if (out != NULL && out->chain == NULL)
		out = NULL;
	if (prof == NULL && out == NULL)
		return 0;
	if (registry_open(err, errlen) != 0 || registry_lock(err, errlen) != 0)
		return -1;
	if ((dfd = dup(reg.dirfd)) < 0 || (d = fdopendir(dfd)) == NULL) {
		snprintf(err, errlen, "cannot read the host's registry of held directories: %s", strerror(errno));
		if (dfd >= 0)
			close(dfd);
		flock(reg.dirfd, LOCK_UN);
		return -1;
	}
	rewinddir(d);
	while (!clash && (de = readdir(d)) != NULL) {
		if (de->d_name[0] == '.' || strcmp(de->d_name, reg.own) == 0)
			continue;
		clash = registry_clash_file(de->d_name, ns, job_id, prof, prof_name, out, out_name, err, errlen);
	}
	closedir(d);
	if (!clash) {
		*handle = ++reg.next ? reg.next : ++reg.next;
		if (prof != NULL)
			registry_add(*handle, ns, job_id, 'p', prof);
		if (out != NULL)
			registry_add(*handle, ns, job_id, 'o', out);
		if (registry_write() != 0) {
			/* Not recorded, so not checked by the others: the job may not run. */
			snprintf(err, errlen, "cannot record the job's directories in the host's registry "
			    "(builds_root/%s/%s): %s", JOBS_DIR, REGISTRY_DIR, strerror(errno));
			registry_forget(*handle);
			*handle = 0;
			clash = true;
		}
	}
	flock(reg.dirfd, LOCK_UN);
	return clash ? -1 : 0;
}

/* Forget the entries of handle; see worker.h. */
void
registry_drop(unsigned handle)
{
	char err[ERR_MAX];

	if (handle == 0)
		return;
	registry_forget(handle);
	if (reg.dirfd < 0)
		return;
	/* Not written now (lock busy): the next take or drop writes it; until then others see more, not less. */
	if (registry_lock(err, sizeof err) != 0) {
		reg.dirty = true;
		log_warn("%s", err);
		return;
	}
	registry_write();
	flock(reg.dirfd, LOCK_UN);
}
