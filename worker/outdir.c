/*
 * outdir.c: the directories the worker owns under builds_root/jobs/ (a
 * job's default output, builds_root/jobs/<id>/<attempt>/, and the
 * unpacked profile_archive, builds_root/jobs/<id>/profile.XXXXXX/), and
 * the min_free check that keeps a worker with a full disk from taking
 * jobs.
 *
 * Invariant: nothing below builds_root/jobs/ is named by a job (job.c
 * refuses a profile or output there) and a build sees only its own leaf,
 * so builds_root/jobs/<id> is written by workers alone.  Each component
 * is still created with mkdirat() and opened with O_NOFOLLOW|O_DIRECTORY
 * below the fd of the one before, so a symlink planted anyway is refused,
 * never followed.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "worker.h"

static ev_timer disk_timer;
static bool disk_timer_init;
static void (*disk_room)(void);

/*
 * realpath(builds_root), computed at most once per turn of the event
 * loop (a job's checks ask for it two or three times in one callback,
 * each realpath a readlink per component).  Within one turn the answer
 * is the one a fresh call would give a few microseconds later; the
 * next turn resolves it again, so a builds_root whose symlink the
 * operator moved is seen as before.  NULL with errno when it fails.
 */
static const char *
outdir_root_real(void)
{
	static char real[PATH_MAX];
	static ev_tstamp at = -1;
	static bool ok;

	if (at == ev_now(EV_DEFAULT) && ok)
		return real;
	at = ev_now(EV_DEFAULT);
	ok = realpath(wk->conf->builds_root, real) != NULL;
	return ok ? real : NULL;
}

/* mkdirat (an existing directory is fine), then open it without following a symlink. */
static int
outdir_step(int dfd, const char *name, char *err, size_t errlen)
{
	int fd;

	if (mkdirat(dfd, name, 0755) != 0 && errno != EEXIST) {
		snprintf(err, errlen, "cannot make %s: %s", name, strerror(errno));
		return -1;
	}
	if ((fd = openat(dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)) < 0)
		snprintf(err, errlen, "%s: %s", name, errno == ELOOP || errno == ENOTDIR ?
		    "a symlink or not a directory (refused, not followed)" : strerror(errno));
	return fd;
}

/* Make builds_root/jobs/<id>/<leaf> fresh; see worker.h. */
int
outdir_make(const char *id, const char *leaf, char *path, size_t pathlen, int *fd, char *err,
    size_t errlen)
{
	char real[PATH_MAX], name[NAME_MAX + 1], aside[NAME_MAX + 1], e[ERR_MAX];
	int rootfd, jfd, idfd, lfd = -1;
	unsigned char rnd[6];
	const char *rr;

	*fd = -1;
	if ((rr = outdir_root_real()) != NULL)
		snprintf(real, sizeof real, "%s", rr);
	if (rr == NULL ||
	    (rootfd = open(real, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0) {
		snprintf(err, errlen, "builds_root %s: %s", wk->conf->builds_root, strerror(errno));
		return -1;
	}
	jfd = outdir_step(rootfd, JOBS_DIR, e, sizeof e);
	close(rootfd);
	if (jfd < 0 || (idfd = outdir_step(jfd, id, e, sizeof e)) < 0) {
		if (jfd >= 0)
			close(jfd);
		snprintf(err, errlen, "builds_root/%s: %s", JOBS_DIR, e);
		return -1;
	}
	close(jfd);
	for (int tries = 0; tries < 16 && lfd < 0; tries++) {
		if (leaf != NULL)
			snprintf(name, sizeof name, "%s", leaf);
		else {
			static const char abc[] = "abcdefghijklmnopqrstuvwxyz0123456789";
			if (getrandom(rnd, sizeof rnd, 0) != (ssize_t)sizeof rnd)
				for (size_t i = 0; i < sizeof rnd; i++)
					rnd[i] = (unsigned char)rand();
			snprintf(name, sizeof name, "profile.%c%c%c%c%c%c", abc[rnd[0] % 36], abc[rnd[1] % 36],
			    abc[rnd[2] % 36], abc[rnd[3] % 36], abc[rnd[4] % 36], abc[rnd[5] % 36]);
		}
		if (mkdirat(idfd, name, 0755) == 0) {
			lfd = openat(idfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
			if (lfd < 0)
				snprintf(e, sizeof e, "%s: %s", name, strerror(errno));
			break;
		}
		if (errno != EEXIST) {
			snprintf(e, sizeof e, "cannot make %s: %s", name, strerror(errno));
			break;
		}
		if (leaf != NULL) {
			/* Left by an earlier job of the same id and attempt: keep it, out of the way. */
			snprintf(aside, sizeof aside, "%s.%lld", leaf, (long long)now_real());
			if (renameat(idfd, name, idfd, aside) != 0) {
				snprintf(e, sizeof e, "%s exists and cannot be moved aside: %s", name, strerror(errno));
				break;
			}
			log_notice("job %s: moved an earlier %s/%s/%s aside to %s", id, JOBS_DIR, id, name, aside);
		}
	}
	close(idfd);
	if (lfd < 0) {
		snprintf(err, errlen, "builds_root/%s/%s: %s", JOBS_DIR, id, e);
		return -1;
	}
	if ((size_t)snprintf(path, pathlen, "%s/%s/%s/%s", real, JOBS_DIR, id, name) >= pathlen) {
		close(lfd);
		snprintf(err, errlen, "builds_root/%s/%s/%s: path too long", JOBS_DIR, id, name);
		return -1;
	}
	*fd = lfd;
	return 0;
}

/*
 * Remove a worker-made directory: `rm -rf --one-file-system` in a helper
 * process, which walks with openat and never follows a symlink (a build
 * may have left millions of files: not in the loop).
 */
void
outdir_remove(const char *path)
{
	struct strv argv = { 0 };

	if (!outdir_is_owned(path)) {
		log_err("not removing %s: not a directory of builds_root/%s", path, JOBS_DIR);
		return;
	}
	strv_split(&argv, "rm -rf --one-file-system --", " ");
	strv_push(&argv, path);
	proc_run(argv.v, NULL, NULL);
	strv_free(&argv);
}

/* Whether real is builds_root/jobs/ or below. */
bool
outdir_is_owned(const char *real)
{
	const char *root = outdir_root_real();
	size_t n;

	if (root == NULL)
		return false;
	n = strlen(root);
	if (strncmp(real, root, n) != 0 || real[n] != '/')
		return false;
	real += n + 1;
	n = strlen(JOBS_DIR);
	return strncmp(real, JOBS_DIR, n) == 0 && (real[n] == '\0' || real[n] == '/');
}

/* Free bytes in builds_root against min_free. */
bool
outdir_disk_ok(uint64_t *free_bytes)
{
	struct statvfs sv;
	uint64_t f;

	if (statvfs(wk->conf->builds_root, &sv) != 0) {
		if (free_bytes)
			*free_bytes = 0;
		return wk->conf->min_free == 0;
	}
	f = (uint64_t)sv.f_bavail * (uint64_t)sv.f_frsize;
	if (free_bytes)
		*free_bytes = f;
	return wk->conf->min_free == 0 || f >= wk->conf->min_free;
}

/* The disk timer: once there is room again, tell outdir_disk_wait()'s caller. */
static void
outdir_disk_cb(EV_P_ ev_timer *w, int revents)
{
	uint64_t f;

	(void)revents;
	if (!outdir_disk_ok(&f))
		return;
	ev_timer_stop(loop, w);
	log_notice("builds_root has %llu bytes free again (min_free %llu): taking jobs",
	    (unsigned long long)f, (unsigned long long)wk->conf->min_free);
	disk_room();
}

/* Start the disk timer (once) while builds_root is below min_free. */
void
outdir_disk_wait(void (*room)(void))
{
	uint64_t f = 0;

	disk_room = room;
	if (!disk_timer_init) {
		ev_timer_init(&disk_timer, outdir_disk_cb, wk->conf->heartbeat_interval,
		    wk->conf->heartbeat_interval);
		disk_timer_init = true;
	}
	if (ev_is_active(&disk_timer))
		return;
	outdir_disk_ok(&f);
	log_warn("builds_root has %llu bytes free, below min_free (%llu): taking no job until it has room",
	    (unsigned long long)f, (unsigned long long)wk->conf->min_free);
	ev_timer_start(EV_DEFAULT, &disk_timer);
}
