/*
 * pack.c: `enqueue submit --profile-dir DIR` packs a local profile into
 * a gzip-compressed tar (pax) in memory with libarchive, for the job's
 * profile_archive.  Symlinks are stored as symlinks (never followed);
 * devices, FIFOs and sockets are refused, as the worker would refuse them.
 * Names are relative to DIR; owners are stored as 0, modes as they are.
 */
#include <archive.h>
#include <archive_entry.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "enqueue.h"

struct pack_buf {
	char *data;
	size_t len, cap;
};

/* nftw() has no user pointer: one pack at a time. */
static struct archive *pack_a;
static size_t pack_root_len;
static char pack_err[ERR_MAX];

/* libarchive's write callback: append to the buffer. */
static la_ssize_t
pack_write(struct archive *a, void *arg, const void *buf, size_t n)
{
	struct pack_buf *pb = arg;

	(void)a;
	if (pb->len + n > pb->cap) {
		pb->cap = (pb->len + n) * 2;
		pb->data = xrealloc(pb->data, pb->cap);
	}
	memcpy(pb->data + pb->len, buf, n);
	pb->len += n;
	return (la_ssize_t)n;
}

/* Add one file of the walk. */
static int
pack_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	struct archive_entry *e;
	const char *rel = path + pack_root_len;
	char link[PATH_MAX], buf[65536];
	ssize_t n;
	int fd = -1;

	(void)flag;
	if (ftw->level == 0)
		return 0;
	while (*rel == '/')
		rel++;
	if (!S_ISREG(st->st_mode) && !S_ISDIR(st->st_mode) && !S_ISLNK(st->st_mode)) {
		snprintf(pack_err, sizeof pack_err, "%s: not a file, directory or symlink (workers refuse it)", path);
		return 1;
	}
	if (S_ISREG(st->st_mode) && (fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)) < 0) {
		snprintf(pack_err, sizeof pack_err, "%s: %s", path, strerror(errno));
		return 1;
	}
	e = archive_entry_new();
	archive_entry_copy_stat(e, st);
	archive_entry_set_pathname(e, rel);
	archive_entry_set_uid(e, 0);
	archive_entry_set_gid(e, 0);
	archive_entry_set_perm(e, st->st_mode & 0777);
	archive_entry_set_nlink(e, 1);
	if (S_ISLNK(st->st_mode)) {
		n = readlink(path, link, sizeof link - 1);
		if (n < 0) {
			snprintf(pack_err, sizeof pack_err, "%s: %s", path, strerror(errno));
			archive_entry_free(e);
			return 1;
		}
		link[n] = '\0';
		archive_entry_set_symlink(e, link);
	}
	if (archive_write_header(pack_a, e) != ARCHIVE_OK) {
		snprintf(pack_err, sizeof pack_err, "%s: %s", path, archive_error_string(pack_a));
		archive_entry_free(e);
		if (fd >= 0)
			close(fd);
		return 1;
	}
	archive_entry_free(e);
	while (fd >= 0 && (n = read(fd, buf, sizeof buf)) > 0)
		archive_write_data(pack_a, buf, (size_t)n);
	if (fd >= 0)
		close(fd);
	return 0;
}

/* Pack dir into a .tar.gz in *out (malloc'd); 0, or -1 with err. */
int
pack_dir(const char *dir, char **out, size_t *outlen, char *err, size_t errlen)
{
	struct pack_buf pb = { 0 };
	struct stat st;
	int rc;

	if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
		snprintf(err, errlen, "--profile-dir %s: %s", dir, errno ? strerror(errno) : "not a directory");
		return -1;
	}
	pack_a = archive_write_new();
	archive_write_set_format_pax_restricted(pack_a);
	archive_write_add_filter_gzip(pack_a);
	archive_write_set_bytes_in_last_block(pack_a, 1);
	if (archive_write_open(pack_a, &pb, NULL, pack_write, NULL) != ARCHIVE_OK) {
		snprintf(err, errlen, "--profile-dir: %s", archive_error_string(pack_a));
		archive_write_free(pack_a);
		return -1;
	}
	pack_root_len = strlen(dir);
	pack_err[0] = '\0';
	rc = nftw(dir, pack_one, 32, FTW_PHYS);
	if (archive_write_close(pack_a) != ARCHIVE_OK && rc == 0) {
		snprintf(pack_err, sizeof pack_err, "%s", archive_error_string(pack_a));
		rc = 1;
	}
	archive_write_free(pack_a);
	pack_a = NULL;
	if (rc != 0) {
		snprintf(err, errlen, "--profile-dir: %s", pack_err[0] ? pack_err : strerror(errno));
		free(pb.data);
		return -1;
	}
	*out = pb.data;
	*outlen = pb.len;
	return 0;
}
