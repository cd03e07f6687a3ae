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
 * A worker holding nothing leaves its file empty (one newline): every
 * job's check reads every other worker's file, and in a fleet most are
 * idle, so an empty one costs a reader one fstatat().  A file whose lock
 * can be taken is a gone worker's (the kernel dropped its lock with its
 * last descriptor): a reader finding it non-empty deletes it, and a
 * worker opening the registry (at its first job) deletes all such files,
 * so one killed while idle leaves nothing once another starts.
 *
 * Checking and recording happen under flock(LOCK_EX) of the .held
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
#define REGISTRY_BLOCK 4096		/* what a cut keeps allocated past the end, at least */

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
	size_t reserved;		/* bytes of our file known allocated (a block multiple) */
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

/* Whether the file fd (named name) is a gone worker's, its lock free; then it is deleted. */
static bool
registry_gone(int fd, const char *name)
{
	if (flock(fd, LOCK_SH | LOCK_NB) != 0)
		return false;
	unlinkat(reg.dirfd, name, 0);
	return true;
}

/*
 * Call fn on each other worker's file until one returns true: 1 then, 0
 * when none did, -1 with errno when the directory cannot be read.  Dot
 * names are files still being made.
 */
static int
registry_each(bool (*fn)(const char *, void *), void *arg)
{
	struct dirent *de;
	bool stopped = false;
	DIR *d;
	int dfd;

	if ((dfd = dup(reg.dirfd)) < 0 || (d = fdopendir(dfd)) == NULL) {
		if (dfd >= 0)
			close(dfd);
		return -1;
	}
	rewinddir(d);
	while (!stopped && (de = readdir(d)) != NULL)
		if (de->d_name[0] != '.' && strcmp(de->d_name, reg.own) != 0)
			stopped = fn(de->d_name, arg);
	closedir(d);
	return stopped ? 1 : 0;
}

/* registry_each(): delete a gone worker's file, empty or not (a live one's is locked before it is named). */
static bool
registry_sweep_one(const char *name, void *arg)
{
	int fd = openat(reg.dirfd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);

	(void)arg;
	if (fd >= 0) {
		registry_gone(fd, name);
		close(fd);
	}
	return false;
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
	registry_each(registry_sweep_one, NULL);
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
 * hold.  So a write that grows the file past its last block first
 * reserves the blocks it needs (fallocate with KEEP_SIZE, which fails
 * instead of the write), the new text is written over the old, and only
 * then is the file cut to its length: a write that fails midway leaves
 * old lines behind, which only ever show more directories held, never
 * fewer.  The cut gives back every block past the one holding the end
 * (ext4 frees a reservation past the end too), so what stays reserved is
 * the length rounded up to a block.
 */
static int
registry_write(void)
{
	char *buf, *p;
	size_t len, need;
	int rc = 0;

	/*
	 * Lines were formatted when added.  Nothing held: "\n", not nothing
	 * (cut to 0, the block is freed and allocated again at the next
	 * write, under the lock: a fleet ran 25% fewer jobs a second).
	 */
	len = reg.n > 0 ? strlen("worker ") + strlen(wk->id) + 1 : 1;
	for (size_t i = 0; i < reg.n; i++)
		len += reg.v[i].len;
	need = (len + REGISTRY_BLOCK - 1) / REGISTRY_BLOCK * REGISTRY_BLOCK;
	buf = xmalloc(len + 1);
	p = buf;
	if (reg.n > 0)
		p += sprintf(buf, "worker %s\n", wk->id);
	else
		*p++ = '\n';
	for (size_t i = 0; i < reg.n; i++) {
		memcpy(p, reg.v[i].line, reg.v[i].len);
		p += reg.v[i].len;
	}
	if (need > reg.reserved) {
		if (fallocate(reg.ownfd, FALLOC_FL_KEEP_SIZE, 0, (off_t)need) != 0 && errno != EOPNOTSUPP) {
			rc = -1;
			goto out;
		}
	}
	if (pwrite(reg.ownfd, buf, len, 0) != (ssize_t)len || ftruncate(reg.ownfd, (off_t)len) != 0)
		rc = -1;
	else
		reg.reserved = need;
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

/*
 * Read another worker's file: gone (its lock is free) means delete it;
 * else check each line.  true with err on a clash.
 */
static bool
registry_clash_file(const char *name, void *arg)
{
	const struct regline_want *w = arg;
	char wid[ID_MAX + 64] = "?", *buf, *line, *save = NULL;
	struct stat st;
	bool clash = false;
	size_t size;
	ssize_t n;
	int fd;

	/* Empty (one newline): a worker that holds nothing, or one gone while idle (registry_sweep_one()'s). */
	if (fstatat(reg.dirfd, name, &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(st.st_mode) || st.st_size <= 1)
		return false;
	if ((fd = openat(reg.dirfd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC)) < 0)
		return false;
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
		close(fd);
		return false;
	}
	if (registry_gone(fd, name)) {
		close(fd);	/* nothing it named is held any more */
		return false;
	}
	/* Its size is exact: every write is made under the directory's lock, which we hold. */
	size = st.st_size < REGISTRY_FILE_MAX ? (size_t)st.st_size : REGISTRY_FILE_MAX;
	buf = xmalloc(size + 1);
	n = pread(fd, buf, size, 0);
	close(fd);
	buf[n > 0 ? n : 0] = '\0';
	for (line = strtok_r(buf, "\n", &save); line != NULL && !clash; line = strtok_r(NULL, "\n", &save)) {
		if (strncmp(line, "worker ", 7) == 0)
			snprintf(wid, sizeof wid, "%s", line + 7);
		else
			clash = regline_clash(line, wid, w);
	}
	free(buf);
	return clash;
}

/* Add one of our entries (its line formatted now). */
static void
registry_add(unsigned handle, const char *ns, const char *job_id, char kind, const struct path_dir *pd)
{
	struct registry_entry *e;

	if (reg.n == reg.cap) {
		reg.cap = reg.cap ? reg.cap * 2 : 8;
		reg.v = xrealloc(reg.v, reg.cap * sizeof *reg.v);
	}
	e = &reg.v[reg.n++];
	e->handle = handle;
	e->line = regline_format(ns, job_id, kind, pd, &e->len);
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
	struct regline_want want = { ns, job_id, prof, out, prof_name, out_name, err, errlen };
	bool clash;
	int rc;

	*handle = 0;
	if (prof != NULL && prof->chain == NULL)
		want.prof = prof = NULL;
	if (out != NULL && out->chain == NULL)
		want.out = out = NULL;
	if (prof == NULL && out == NULL)
		return 0;
	if (registry_open(err, errlen) != 0 || registry_lock(err, errlen) != 0)
		return -1;
	if ((rc = registry_each(registry_clash_file, &want)) < 0) {
		snprintf(err, errlen, "cannot read the host's registry of held directories: %s", strerror(errno));
		flock(reg.dirfd, LOCK_UN);
		return -1;
	}
	clash = rc == 1;
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
