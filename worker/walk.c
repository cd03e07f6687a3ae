/*
 * walk.c: the walk of a finished build's output tree, from descriptors.
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
 * The caps (collect_max_files, _bytes, _depth in worker.ini) are counted
 * here as the walk goes; collect.c drives it one slice at a time and
 * hashes the files it opens.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "collect.h"

/* Fail the walk with a message (the first one wins). */
void
walk_fail(struct collect *co, const char *fmt, ...)
{
	va_list ap;

	if (co->error[0] != '\0')
		return;
	va_start(ap, fmt);
	vsnprintf(co->error, sizeof co->error, fmt, ap);
	va_end(ap);
}

/* Drop the innermost open directory. */
void
walk_pop(struct collect *co)
{
	struct collect_dir *cd = &co->dirs[--co->ndirs];

	closedir(cd->d);
	free(cd->rel);
}

/* name below the directory rel, as listed. */
static char *
walk_join(const char *rel, const char *name)
{
	return *rel ? xasprintf("%s/%s", rel, name) : xstrdup(name);
}

/* Count bytes against collect_max_bytes; false (and the error) when over. */
bool
walk_count_bytes(struct collect *co, uint64_t add)
{
	uint64_t max = wk->conf->collect_max_bytes;
	char b[32];

	if (add > max || co->bytes > max - add) {
		walk_fail(co, "output has more than %s of files (collect_max_bytes)",
		    fmt_bytes(max, b, sizeof b));
		return false;
	}
	co->bytes += add;
	return true;
}

/* Open the directory name (below the innermost one) and descend into it. */
static void
walk_enter(struct collect *co, int parent, const char *name, const char *rel, int depth)
{
	struct stat st;
	DIR *d;
	int fd;

	if (depth > wk->conf->collect_max_depth) {
		walk_fail(co, "output has directories nested more than %ld deep (collect_max_depth)",
		    wk->conf->collect_max_depth);
		return;
	}
	fd = openat(parent, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0) {
		if (errno != ENOENT && errno != ENOTDIR && errno != ELOOP)	/* gone or swapped: skip */
			walk_fail(co, "reading directory %s: %s", rel, strerror(errno));
		return;
	}
	if (fstat(fd, &st) != 0 || !S_ISDIR(st.st_mode) || st.st_dev != co->dev) {
		close(fd);	/* a mount point: not ours to walk */
		return;
	}
	if ((d = fdopendir(fd)) == NULL) {
		walk_fail(co, "reading directory %s: %s", rel, strerror(errno));
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
walk_open(struct collect *co, int parent, const char *name, const char *rel)
{
	char proc[64];
	struct stat st;
	int pfd, fd;

	if ((pfd = openat(parent, name, O_PATH | O_NOFOLLOW | O_CLOEXEC)) < 0) {
		if (errno != ENOENT)
			walk_fail(co, "reading artifact %s: %s", rel, strerror(errno));
		return;
	}
	if (fstat(pfd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_dev != co->dev) {
		close(pfd);	/* a symlink, FIFO, socket, device, or a mount: skipped */
		return;
	}
	if (!walk_count_bytes(co, (uint64_t)st.st_size)) {	/* a sparse file counts by its size */
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
		walk_fail(co, "reading artifact %s: %s", rel, strerror(errno));
		return;
	}
	co->fd = fd;
	co->name = xstrdup(rel);
	co->size = (uint64_t)st.st_size;
	co->got = 0;
	SHA256Init(&co->ctx);
}

/* One directory entry of the innermost directory. */
void
walk_entry(struct collect *co, const struct dirent *de)
{
	struct collect_dir *cd = &co->dirs[co->ndirs - 1];
	int parent = dirfd(cd->d), depth = cd->depth + 1;
	unsigned char type = de->d_type;
	char *rel;
	struct stat st;

	if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
		return;
	if (++co->entries > (size_t)wk->conf->collect_max_files) {
		walk_fail(co, "output has more than %ld files (collect_max_files)",
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
	rel = walk_join(cd->rel, de->d_name);
	if (type == DT_DIR)
		walk_enter(co, parent, de->d_name, rel, depth);	/* may move co->dirs */
	else
		walk_open(co, parent, de->d_name, rel);
	free(rel);
}

/*
 * Open the output dir itself: not through a symlink, no FIFO to block on.
 * Gone is no artifacts; anything else that is not a directory fails.
 */
int
walk_root(struct collect *co, const char *dir)
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
			walk_fail(co, "reading the output directory: %s", strerror(errno));
		return -1;
	}
	if (fstat(fd, &st) != 0 || (d = fdopendir(fd)) == NULL) {
		walk_fail(co, "reading the output directory: %s", strerror(errno));
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
