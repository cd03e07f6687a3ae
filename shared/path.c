/*
 * path.c: a job's profile and output as directories strictly below
 * builds_root, opened without following a single symlink.
 *
 * The threat: a build can rearrange its output tree at any moment, and a
 * later job may name a path through that tree.  Checking a path string
 * and using it again later (realpath(), then the runtime's bind mount) is
 * a race the build wins.  So nothing here hands out a string to trust:
 * path_open() returns an O_PATH descriptor of the directory itself,
 * reached from a descriptor of builds_root one component at a time, and
 * the caller uses that descriptor (never the string) from then on.
 *
 * Invariant: every step of the walk is relative to the descriptor of the
 * directory the previous step reached, refuses "..", and refuses a symlink
 * (even one that would stay inside), so the directory reached was, at the
 * moment of each step, a child of a directory below builds_root: it is
 * below builds_root.  openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS) does
 * the same walk in the kernel in one call; without it (ENOSYS, or a
 * seccomp filter) the walk is done here with O_NOFOLLOW opens.  Missing
 * output directories are made with mkdirat() on the parent's descriptor
 * and opened again with O_NOFOLLOW: a symlink planted between the two is
 * refused, never followed.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <linux/openat2.h>

#include "debate.h"

#define PATH_CHAIN_MAX 4096	/* directories between one and "/", at most */

bool path_no_openat2;
void (*path_after_mkdir)(int dirfd, const char *name);

/* One openat2() in the kernel: no symlinks, no escape; -1 with errno. */
static int
path_openat2(int rootfd, const char *rel)
{
#ifdef SYS_openat2
	struct open_how how = {
		.flags = O_PATH | O_DIRECTORY | O_CLOEXEC,
		.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS,
	};

	if (path_no_openat2) {
		errno = ENOSYS;
		return -1;
	}
	return (int)syscall(SYS_openat2, rootfd, rel, &how, sizeof how);
#else
	(void)rootfd;
	(void)rel;
	errno = ENOSYS;
	return -1;
#endif
}

/* Open name below dirfd as a directory, never through a symlink. */
static int
path_open_one(int dirfd, const char *name)
{
	return openat(dirfd, name, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
}

/*
 * Why name below dirfd could not be opened as a directory, into err:
 * rel is the whole path, upto the part of it that names this component.
 */
static void
path_why(int dirfd, const char *name, const char *rel, size_t upto, int e, char *err, size_t errlen)
{
	struct stat st;

	if ((e == ENOTDIR || e == ELOOP) && fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0) {
		if (S_ISLNK(st.st_mode))
			snprintf(err, errlen, "\"%s\": \"%.*s\" is a symlink; paths may not go through "
			    "symlinks (one could lead outside builds_root)", rel, (int)upto, rel);
		else
			snprintf(err, errlen, "\"%s\": \"%.*s\" is not a directory", rel, (int)upto, rel);
		return;
	}
	snprintf(err, errlen, "\"%s\": %s", rel, strerror(e));
}

/*
 * The walk without openat2: one component at a time from rootfd, each
 * opened O_NOFOLLOW relative to the last; missing ones made when create.
 * rel was checked lexically (no "..", no empty result).  Returns the fd.
 */
static int
path_walk(int rootfd, const char *rel, bool create, char *err, size_t errlen)
{
	char *buf = xstrdup(rel), *comp, *save;
	int cur, fd;

	if ((cur = fcntl(rootfd, F_DUPFD_CLOEXEC, 0)) < 0) {
		snprintf(err, errlen, "\"%s\": %s", rel, strerror(errno));
		free(buf);
		return -1;
	}
	for (comp = strtok_r(buf, "/", &save); comp != NULL; comp = strtok_r(NULL, "/", &save)) {
		size_t upto = (size_t)(comp - buf) + strlen(comp);
		struct stat st;

		if (strcmp(comp, ".") == 0)
			continue;
		fd = path_open_one(cur, comp);
		if (fd < 0 && errno == ENOENT && create) {
			if (mkdirat(cur, comp, 0755) == 0) {
				if (path_after_mkdir != NULL)
					path_after_mkdir(cur, comp);
			} else if (errno != EEXIST) {
				snprintf(err, errlen, "\"%s\": cannot create \"%.*s\": %s", rel, (int)upto, rel,
				    strerror(errno));
				goto fail;
			}
			fd = path_open_one(cur, comp);
		}
		if (fd < 0) {
			path_why(cur, comp, rel, upto, errno, err, errlen);
			goto fail;
		}
		if (fstat(fd, &st) != 0 || !S_ISDIR(st.st_mode)) {
			close(fd);
			path_why(cur, comp, rel, upto, ENOTDIR, err, errlen);
			goto fail;
		}
		close(cur);
		cur = fd;
	}
	free(buf);
	return cur;
fail:
	close(cur);
	free(buf);
	return -1;
}

/*
 * Check rel by its text: not empty (builds_root itself), no "..", no
 * component over NAME_MAX.  Returns the part after leading slashes.
 */
static const char *
path_lexical(const char *rel, char *err, size_t errlen)
{
	const char *p = rel, *q;
	bool any = false;

	while (*p == '/')
		p++;
	for (q = p; *q != '\0';) {
		size_t n = strcspn(q, "/");
		if (n == 2 && q[0] == '.' && q[1] == '.') {
			snprintf(err, errlen, "\"%s\": \"..\" is not allowed (it could lead outside builds_root)",
			    rel);
			return NULL;
		}
		if (n > NAME_MAX) {
			snprintf(err, errlen, "\"%s\": a path component is longer than %d bytes", rel, NAME_MAX);
			return NULL;
		}
		if (n > 0 && !(n == 1 && q[0] == '.'))
			any = true;
		q += n;
		while (*q == '/')
			q++;
	}
	if (!any) {
		snprintf(err, errlen, "\"%s\" is builds_root itself, not a directory below it", rel);
		return NULL;
	}
	return p;
}

/*
 * The identities of fd's directory and of every directory above it, up
 * to "/", found by opening ".." from each in turn (the kernel's parent,
 * not a name anyone can change under us).  Stored in pd.
 *
 * With root (builds_root held by path_root(), its own chain found in
 * this same callback), a walk that meets root stops there and copies
 * root's chain for the rest: the chain is the one a walk to "/" would
 * find, at the cost of the levels below builds_root only (each level is
 * an openat, an fstat and a close).  The copy is as fresh as the walk:
 * a build cannot move builds_root or anything above it (it sees its
 * output only), and what an operator moves in the microseconds between
 * root's walk and this one it could as well move during a single walk.
 * The chains stay whole, not cut at builds_root, because a held chain
 * may be compared after builds_root's symlink was pointed elsewhere:
 * a directory between the old and the new builds_root must still be
 * found in both.
 */
static int
path_chain(int fd, const struct path_dir *root, struct path_dir *pd, char *err, size_t errlen)
{
	int cur = fd, up;	/* fd itself is the caller's: closed only once it is not cur */
	struct stat st, pst;
	size_t cap = 8;

	pd->chain = xcalloc(cap, sizeof *pd->chain);
	pd->depth = 0;
	if (fstat(cur, &st) != 0)
		goto fail;
	for (;;) {
		if (root != NULL && root->chain != NULL && root->chain[0].dev == st.st_dev &&
		    root->chain[0].ino == st.st_ino) {
			/* builds_root: the rest is its chain */
			pd->chain = xrealloc(pd->chain, (pd->depth + root->depth) * sizeof *pd->chain);
			memcpy(pd->chain + pd->depth, root->chain, root->depth * sizeof *pd->chain);
			pd->depth += root->depth;
			break;
		}
		if (pd->depth == cap) {
			cap *= 2;
			pd->chain = xrealloc(pd->chain, cap * sizeof *pd->chain);
		}
		pd->chain[pd->depth].dev = st.st_dev;
		pd->chain[pd->depth].ino = st.st_ino;
		pd->depth++;
		if ((up = openat(cur, "..", O_PATH | O_DIRECTORY | O_CLOEXEC)) < 0 || fstat(up, &pst) != 0) {
			if (up >= 0)
				close(up);
			goto fail;
		}
		if (cur != fd)
			close(cur);
		cur = up;
		if (pst.st_dev == st.st_dev && pst.st_ino == st.st_ino)
			break;	/* "/": its own parent */
		if (pd->depth >= PATH_CHAIN_MAX) {
			errno = ELOOP;
			goto fail;
		}
		st = pst;
	}
	if (cur != fd)
		close(cur);
	return 0;
fail:
	snprintf(err, errlen, "cannot find the directories above it: %s", strerror(errno));
	if (cur != fd)
		close(cur);
	free(pd->chain);
	pd->chain = NULL;
	pd->depth = 0;
	return -1;
}

/* Whether id is in pd's chain at index from or above. */
static bool
path_chain_has(const struct path_dir *pd, size_t from, const struct path_id *id)
{
	for (size_t i = from; i < pd->depth; i++)
		if (pd->chain[i].dev == id->dev && pd->chain[i].ino == id->ino)
			return true;
	return false;
}

/* Hold the directory of fd, which becomes pd's (closed on failure): its chain and its path. */
static int
path_hold(int fd, const struct path_dir *root, struct path_dir *pd, char *err, size_t errlen)
{
	char link[64];
	ssize_t n;

	memset(pd, 0, sizeof *pd);
	pd->fd = fd;
	if (path_chain(pd->fd, root, pd, err, errlen) != 0)
		goto fail;
	snprintf(link, sizeof link, "/proc/self/fd/%d", pd->fd);
	if ((n = readlink(link, pd->real, sizeof pd->real - 1)) < 0) {
		snprintf(err, errlen, "cannot read %s (is /proc mounted?): %s", link, strerror(errno));
		free(pd->chain);
		pd->chain = NULL;
		goto fail;
	}
	pd->real[n] = '\0';
	return 0;
fail:
	close(pd->fd);
	pd->fd = -1;
	return -1;
}

/* Hold builds_root itself (a symlink to it is followed: it is the operator's); see debate.h. */
int
path_root(const char *root, struct path_dir *rd, char *err, size_t errlen)
{
	char e[ERR_MAX];
	int fd;

	memset(rd, 0, sizeof *rd);
	rd->fd = -1;
	if ((fd = open(root, O_PATH | O_DIRECTORY | O_CLOEXEC)) < 0) {
		snprintf(err, errlen, "builds_root %s: %s", root, strerror(errno));
		return -1;
	}
	if (path_hold(fd, NULL, rd, e, sizeof e) != 0) {
		snprintf(err, errlen, "builds_root %s: %s", root, e);
		return -1;
	}
	return 0;
}

/* Open rel below the held builds_root rd as a directory; see debate.h. */
int
path_open_at(const struct path_dir *rd, const char *rel, bool create, struct path_dir *pd, char *err,
    size_t errlen)
{
	const char *p;
	char e[ERR_MAX];
	int fd;

	memset(pd, 0, sizeof *pd);
	pd->fd = -1;
	if ((p = path_lexical(rel, err, errlen)) == NULL)
		return -1;
	if ((fd = path_openat2(rd->fd, p)) < 0)
		fd = path_walk(rd->fd, p, create, err, errlen);	/* also for the exact message */
	if (fd < 0)
		return -1;
	if (path_hold(fd, rd, pd, e, sizeof e) != 0) {
		snprintf(err, errlen, "\"%s\": %s", rel, e);
		return -1;
	}
	/* It was below the root when opened; it must still be (nothing moved it out). */
	if (!path_chain_has(pd, 1, &rd->chain[0])) {
		snprintf(err, errlen, "\"%s\" is no longer below builds_root", rel);
		path_close(pd);
		return -1;
	}
	return 0;
}

/* Open rel below root as a directory; see debate.h. */
int
path_open(const char *root, const char *rel, bool create, struct path_dir *pd, char *err, size_t errlen)
{
	struct path_dir rd;
	int rc;

	memset(pd, 0, sizeof *pd);
	pd->fd = -1;
	if (path_lexical(rel, err, errlen) == NULL || path_root(root, &rd, err, errlen) != 0)
		return -1;
	rc = path_open_at(&rd, rel, create, pd, err, errlen);
	path_close(&rd);
	return rc;
}

/* Hold the directory of fd (a copy of it); see debate.h. */
int
path_from_fd(int fd, const struct path_dir *root, struct path_dir *pd, char *err, size_t errlen)
{
	int copy = fcntl(fd, F_DUPFD_CLOEXEC, 0);

	if (copy < 0) {
		memset(pd, 0, sizeof *pd);
		pd->fd = -1;
		snprintf(err, errlen, "%s", strerror(errno));
		return -1;
	}
	return path_hold(copy, root, pd, err, errlen);
}

/* Close what path_open() opened (a zeroed pd is fine too). */
void
path_close(struct path_dir *pd)
{
	if (pd->chain == NULL)
		return;
	close(pd->fd);
	free(pd->chain);
	pd->chain = NULL;
	pd->depth = 0;
	pd->fd = -1;
}

/* Recompute pd's chain of parents (a directory may have moved); the old one stays on failure. */
void
path_refresh(struct path_dir *pd, const struct path_dir *root)
{
	struct path_dir fresh = *pd;
	char e[ERR_MAX];

	if (pd->chain == NULL || path_chain(pd->fd, root, &fresh, e, sizeof e) != 0)
		return;
	free(pd->chain);
	pd->chain = fresh.chain;
	pd->depth = fresh.depth;
}

/* Whether a and b are one directory or one is inside the other. */
bool
path_nested(const struct path_dir *a, const struct path_dir *b)
{
	if (a->chain == NULL || b->chain == NULL)
		return false;
	return path_chain_has(a, 0, &b->chain[0]) || path_chain_has(b, 0, &a->chain[0]);
}

/* Resolve rel under root to the real path of the directory; see debate.h. */
int
path_resolve(const char *root, const char *rel, bool create, char *out, size_t outlen, char *err,
    size_t errlen)
{
	struct path_dir pd;

	if (path_open(root, rel, create, &pd, err, errlen) != 0)
		return -1;
	if (strlen(pd.real) >= outlen) {
		snprintf(err, errlen, "\"%s\": resolved path too long", rel);
		path_close(&pd);
		return -1;
	}
	strcpy(out, pd.real);
	path_close(&pd);
	return 0;
}
