/*
 * archive.c: unpacking a job's profile_archive (a tar, optionally gzip-
 * or zstd-compressed) into the fresh directory the worker made for it.
 *
 * The archive is hostile.  libarchive only parses it; every entry is
 * created here, by us, below the directory's fd: each parent component is
 * opened with O_NOFOLLOW|O_DIRECTORY (a symlink in the way is an error,
 * never followed), files are created with O_CREAT|O_EXCL|O_NOFOLLOW (a
 * name that exists, a symlink included, is an error: nothing is ever
 * written through one), symlinks are made with symlinkat() and never
 * looked through, and a hard link may only name a regular file already
 * unpacked in the same tree (linkat() without AT_SYMLINK_FOLLOW).  No
 * absolute names, no "..", no devices, FIFOs or sockets; setuid, setgid
 * and sticky bits are dropped; ownership is not restored.  Entries, the
 * bytes actually written and the depth are capped (worker.ini), so a
 * compression bomb stops at the byte cap whatever its headers claim.
 *
 * The work is done a slice at a time from an idle watcher, so a big
 * archive does not hold up other jobs or the heartbeat.
 */
#include <archive.h>
#include <archive_entry.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "worker.h"

#define UNPACK_BUF (64 * 1024)
#define UNPACK_SLICE_BYTES (4 << 20)	/* per idle callback */
#define UNPACK_SLICE_ENTRIES 256

/*
 * libarchive brings its compression and XML libraries (2.6 MB more
 * resident in an idle worker, measured): loaded with dlopen() at the
 * first profile_archive.
 */
static struct {
	__typeof__(&archive_entry_filetype) entry_filetype;
	__typeof__(&archive_entry_hardlink) entry_hardlink;
	__typeof__(&archive_entry_pathname) entry_pathname;
	__typeof__(&archive_entry_perm) entry_perm;
	__typeof__(&archive_entry_symlink) entry_symlink;
	__typeof__(&archive_error_string) error_string;
	__typeof__(&archive_read_data) read_data;
	__typeof__(&archive_read_free) read_free;
	__typeof__(&archive_read_new) read_new;
	__typeof__(&archive_read_next_header) read_next_header;
	__typeof__(&archive_read_open_memory) read_open_memory;
	__typeof__(&archive_read_support_filter_gzip) read_support_filter_gzip;
	__typeof__(&archive_read_support_filter_none) read_support_filter_none;
	__typeof__(&archive_read_support_filter_zstd) read_support_filter_zstd;
	__typeof__(&archive_read_support_format_gnutar) read_support_format_gnutar;
	__typeof__(&archive_read_support_format_tar) read_support_format_tar;
} la;
static bool la_loaded;

struct unpack {
	struct archive *a;
	int rootfd;			/* the job's fresh directory (ours) */
	struct unpack_caps caps;
	long entries;
	uint64_t bytes;
	int fd;				/* the regular file being written, or -1 */
	char name[256];			/* its entry name, for messages */
	char *buf;
	bool over;
	int rc;				/* 0 done, -1 refused (err) */
	char err[ERR_MAX];
	ev_idle idle;
	void (*done)(struct job *);
	struct job *job;
};

/* Refuse the archive with a message naming the entry. */
static int __attribute__((format(printf, 3, 4)))
unpack_fail(struct unpack *u, const char *entry, const char *fmt, ...)
{
	char msg[ERR_MAX], shown[128];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	if (entry != NULL) {
		str_printable(shown, sizeof shown, entry);
		snprintf(u->err, sizeof u->err, "profile_archive: entry \"%s\": %s", shown, msg);
	} else
		snprintf(u->err, sizeof u->err, "profile_archive: %s", msg);
	u->rc = -1;
	u->over = true;
	return -1;
}

/*
 * Split name into components below the root: no absolute path, no "..",
 * empty and "." components dropped, at most max_depth of them.  Returns
 * the count (0: the root itself) or -1 with err; comps point into buf.
 */
static int
unpack_split(struct unpack *u, const char *name, char *buf, size_t buflen, char **comps, int max)
{
	char *save, *tok;
	int n = 0;

	if (name == NULL || name[0] == '\0')
		return unpack_fail(u, name ? name : "", "an entry without a name");
	if (name[0] == '/')
		return unpack_fail(u, name, "an absolute path is not allowed");
	if (strlen(name) >= buflen)
		return unpack_fail(u, name, "the name is longer than %zu bytes", buflen - 1);
	strcpy(buf, name);
	for (tok = strtok_r(buf, "/", &save); tok != NULL; tok = strtok_r(NULL, "/", &save)) {
		if (strcmp(tok, ".") == 0)
			continue;
		if (strcmp(tok, "..") == 0)
			return unpack_fail(u, name, "\"..\" is not allowed");
		if (strlen(tok) > NAME_MAX)
			return unpack_fail(u, name, "a component is longer than %d bytes", NAME_MAX);
		if (n >= max)
			return unpack_fail(u, name, "nested deeper than profile_max_depth (%d)", max);
		comps[n++] = tok;
	}
	return n;
}

/*
 * Open the directory holding comps[0..n-1]'s last component, creating
 * missing parents (create) and never following a symlink.  Returns an fd.
 */
static int
unpack_parent(struct unpack *u, const char *name, char **comps, int n, bool create)
{
	int fd = dup(u->rootfd), next;

	if (fd < 0)
		return unpack_fail(u, name, "dup: %s", strerror(errno));
	for (int i = 0; i < n - 1; i++) {
		next = openat(fd, comps[i], O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (next < 0 && errno == ENOENT && create) {
			if (mkdirat(fd, comps[i], 0755) != 0 && errno != EEXIST) {
				close(fd);
				return unpack_fail(u, name, "cannot make directory %s: %s", comps[i], strerror(errno));
			}
			next = openat(fd, comps[i], O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		}
		if (next < 0) {
			int e = errno;
			close(fd);
			if (e == ELOOP || e == ENOTDIR)
				return unpack_fail(u, name, "%s is a symlink or not a directory; nothing is unpacked "
				    "through one", comps[i]);
			return unpack_fail(u, name, "%s: %s", comps[i], strerror(e));
		}
		close(fd);
		fd = next;
	}
	return fd;
}

/* A hard link: only to a regular file already unpacked in this tree. */
static int
unpack_hardlink(struct unpack *u, const char *name, int pfd, const char *last, const char *target)
{
	char buf[PATH_MAX], *comps[1024];
	struct stat st;
	int n, tfd, rc;

	n = unpack_split(u, target, buf, sizeof buf, comps, (int)u->caps.max_depth);
	if (n < 0) {
		/* Name the link, and say what it pointed at. */
		char why[ERR_MAX];
		snprintf(why, sizeof why, "%s", u->err);
		return unpack_fail(u, name, "a hard link to a file outside the tree (%s)", why);
	}
	if (n == 0)
		return unpack_fail(u, name, "a hard link to the archive's root");
	if ((tfd = unpack_parent(u, name, comps, n, false)) < 0)
		return -1;
	if (fstatat(tfd, comps[n - 1], &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(st.st_mode)) {
		close(tfd);
		return unpack_fail(u, name, "a hard link to something that is not a regular file of the archive");
	}
	rc = linkat(tfd, comps[n - 1], pfd, last, 0);
	close(tfd);
	if (rc != 0)
		return unpack_fail(u, name, "link: %s", strerror(errno));
	return 0;
}

/* Create one entry (a regular file stays open for its data). */
static int
unpack_entry(struct unpack *u, struct archive_entry *e)
{
	const char *name = la.entry_pathname(e), *hl = la.entry_hardlink(e);
	char buf[PATH_MAX], *comps[1024];
	mode_t type = la.entry_filetype(e), perm = la.entry_perm(e) & 0777;
	int n, pfd, rc = 0;
	struct stat st;

	if (++u->entries > u->caps.max_entries)
		return unpack_fail(u, name, "more than profile_max_entries (%ld) entries", u->caps.max_entries);
	if ((n = unpack_split(u, name, buf, sizeof buf, comps, (int)u->caps.max_depth)) < 0)
		return -1;
	if (n == 0) {
		if (hl == NULL && type == AE_IFDIR)
			return 0;	/* "./": the root, ours already */
		return unpack_fail(u, name, "names the archive's root");
	}
	if (hl == NULL && type != AE_IFREG && type != AE_IFDIR && type != AE_IFLNK)
		return unpack_fail(u, name, "a %s is not allowed",
		    type == AE_IFCHR || type == AE_IFBLK ? "device node" : type == AE_IFIFO ? "FIFO" :
		    type == AE_IFSOCK ? "socket" : "file of unknown type");
	if ((pfd = unpack_parent(u, name, comps, n, true)) < 0)
		return -1;
	const char *last = comps[n - 1];
	if (hl != NULL)
		rc = unpack_hardlink(u, name, pfd, last, hl);
	else if (type == AE_IFDIR) {
		if (mkdirat(pfd, last, perm | 0700) != 0) {
			if (errno != EEXIST || fstatat(pfd, last, &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISDIR(st.st_mode))
				rc = unpack_fail(u, name, "cannot make the directory: %s",
				    errno == EEXIST ? "a file or symlink of that name exists" : strerror(errno));
		}
	} else if (type == AE_IFLNK) {
		const char *target = la.entry_symlink(e);
		if (target == NULL)
			rc = unpack_fail(u, name, "a symlink without a target");
		else if (symlinkat(target, pfd, last) != 0)
			rc = unpack_fail(u, name, "symlink: %s", errno == EEXIST ? "the name exists already" :
			    strerror(errno));
	} else {
		u->fd = openat(pfd, last, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
		if (u->fd < 0)
			rc = unpack_fail(u, name, "cannot create the file: %s",
			    errno == EEXIST ? "the name exists already (a symlink or a duplicate entry)" :
			    strerror(errno));
		else {
			/* Permission bits only: setuid, setgid and sticky are dropped. */
			if (fchmod(u->fd, perm | 0600) != 0)
				log_debug("unpack: fchmod: %s", strerror(errno));
			snprintf(u->name, sizeof u->name, "%s", name);
		}
	}
	close(pfd);
	return rc;
}

/* Write a block of the open file's data; closes it at its end. */
static void
unpack_data(struct unpack *u, uint64_t *budget)
{
	ssize_t n = la.read_data(u->a, u->buf, UNPACK_BUF);

	if (n < 0) {
		unpack_fail(u, u->name, "%s", la.error_string(u->a));
		return;
	}
	if (n == 0) {
		close(u->fd);
		u->fd = -1;
		return;
	}
	u->bytes += (uint64_t)n;
	if (u->bytes > u->caps.max_bytes) {
		char b[32];
		unpack_fail(u, u->name, "the archive unpacks to more than profile_max_bytes (%s)",
		    fmt_bytes(u->caps.max_bytes, b, sizeof b));
		return;
	}
	for (ssize_t off = 0; off < n;) {
		ssize_t w = write(u->fd, u->buf + off, (size_t)(n - off));
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0) {
			unpack_fail(u, u->name, "write: %s", strerror(errno));
			return;
		}
		off += w;
	}
	*budget = *budget > (uint64_t)n ? *budget - (uint64_t)n : 0;
}

/* One slice of work; true when the unpack is over (u->rc says how). */
bool
unpack_step(struct unpack *u)
{
	uint64_t budget = UNPACK_SLICE_BYTES;
	struct archive_entry *e;
	int entries = 0, r;

	while (!u->over && budget > 0 && entries < UNPACK_SLICE_ENTRIES) {
		if (u->fd >= 0) {
			unpack_data(u, &budget);
			continue;
		}
		r = la.read_next_header(u->a, &e);
		if (r == ARCHIVE_EOF) {
			if (u->entries == 0) {
				unpack_fail(u, NULL, "no entries");
				break;
			}
			u->over = true;
			u->rc = 0;
			break;
		}
		if (r < ARCHIVE_WARN) {
			unpack_fail(u, NULL, "not a readable tar archive (plain, gzip or zstd): %s",
			    la.error_string(u->a) ? la.error_string(u->a) : "unknown error");
			break;
		}
		entries++;
		unpack_entry(u, e);
	}
	return u->over;
}

/* The idle watcher: a slice, then report when over. */
static void
unpack_idle_cb(EV_P_ ev_idle *w, int revents)
{
	struct unpack *u = w->data;

	(void)revents;
	if (!unpack_step(u))
		return;
	ev_idle_stop(loop, w);
	u->done(u->job);
}

/* Load libarchive once; -1 with err when it cannot be. */
static int
unpack_load(char *err, size_t errlen)
{
	void *h;

	if (la_loaded)
		return 0;
	if ((h = dlopen("libarchive.so.13", RTLD_NOW | RTLD_LOCAL)) == NULL) {
		snprintf(err, errlen, "profile_archive: this worker cannot load libarchive: %s", dlerror());
		return -1;
	}
#define SYM(f)                                                                 \
	if ((*(void **)&la.f = dlsym(h, "archive_" #f)) == NULL) {             \
		snprintf(err, errlen, "profile_archive: libarchive lacks archive_%s", #f); \
		dlclose(h);                                                    \
		return -1;                                                     \
	}
	SYM(entry_filetype)
	SYM(entry_hardlink)
	SYM(entry_pathname)
	SYM(entry_perm)
	SYM(entry_symlink)
	SYM(error_string)
	SYM(read_data)
	SYM(read_free)
	SYM(read_new)
	SYM(read_next_header)
	SYM(read_open_memory)
	SYM(read_support_filter_gzip)
	SYM(read_support_filter_none)
	SYM(read_support_filter_zstd)
	SYM(read_support_format_gnutar)
	SYM(read_support_format_tar)
#undef SYM
	la_loaded = true;
	return 0;
}

/* Set up the reader: tar only, gzip or zstd or nothing. */
struct unpack *
unpack_new(int rootfd, const char *data, size_t len, const struct unpack_caps *caps)
{
	struct unpack *u = xcalloc(1, sizeof *u);

	u->rootfd = rootfd;
	u->caps = *caps;
	u->fd = -1;
	u->buf = xmalloc(UNPACK_BUF);
	if (unpack_load(u->err, sizeof u->err) != 0) {
		u->rc = -1;
		u->over = true;
		return u;
	}
	u->a = la.read_new();
	la.read_support_format_tar(u->a);
	la.read_support_format_gnutar(u->a);
	la.read_support_filter_gzip(u->a);
	la.read_support_filter_zstd(u->a);
	la.read_support_filter_none(u->a);
	if (la.read_open_memory(u->a, data, len) != ARCHIVE_OK)
		unpack_fail(u, NULL, "not a readable tar archive (plain, gzip or zstd): %s",
		    la.error_string(u->a) ? la.error_string(u->a) : "unknown error");
	return u;
}

/* Unpack from an idle watcher; done(j) when over (unpack_result says how). */
struct unpack *
unpack_start(int rootfd, const char *data, size_t len, const struct unpack_caps *caps,
    void (*done)(struct job *), struct job *j)
{
	struct unpack *u = unpack_new(rootfd, data, len, caps);

	u->done = done;
	u->job = j;
	ev_idle_init(&u->idle, unpack_idle_cb);
	u->idle.data = u;
	ev_idle_start(EV_DEFAULT, &u->idle);
	return u;
}

/* 0 when unpacked, -1 with the message naming the entry. */
int
unpack_result(const struct unpack *u, const char **err)
{
	*err = u->err;
	return u->rc;
}

/* Close everything (the directory fd is the caller's). */
void
unpack_free(struct unpack *u)
{
	if (u == NULL)
		return;
	if (u->done != NULL)
		ev_idle_stop(EV_DEFAULT, &u->idle);
	if (u->fd >= 0)
		close(u->fd);
	if (u->a != NULL)
		la.read_free(u->a);
	free(u->buf);
	free(u);
}
