/*
 * upload.c: PUT a finished job's artifacts to its upload.url with libcurl.
 *
 * transfer.c drives libcurl from the loop, so uploads never block other
 * jobs, their pipes or the heartbeat; here is each job's upload: its
 * files, one after another, their retries and its end.  Several jobs
 * upload at once.
 *
 * Each file is opened with openat() below the output directory's fd,
 * component by component with O_NOFOLLOW, and must be a regular file of
 * the size collect.c hashed; it is streamed from the fd by curl's read
 * callback (never read whole), with Content-Length and
 * Content-Digest: sha-256=:<base64>: of that hash.  Connection errors,
 * 5xx, 408 and 429 are retried with doubling backoff until the job's
 * upload_timeout; anything else fails at once.
 *
 * Header values and the URL's userinfo and query (a presigned URL's
 * signature) may be credentials: they go to curl and nowhere else.  Logs,
 * events and results show upload_display()'s form of a URL, and the
 * worker never runs a program with them in argv.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "job.h"
#include "transfer.h"

#define UPLOAD_BACKOFF_MAX 30.0
#define UPLOAD_EVENT_EVERY 1.0		/* seconds between upload events of a file */

struct upload_item {
	char *url;			/* the real target (may carry credentials) */
	char *shown;			/* upload_display(url) */
	bool uploaded;
};

struct upload {
	struct job *job;
	void (*progress)(struct job *, const char *, uint64_t, uint64_t, const char *, enum rq_kind);
	void (*done)(struct job *);
	int dirfd;
	struct upload_item *items;
	size_t n, cur;
	CURL *easy;
	struct curl_slist *hdrs;
	int fd;
	uint64_t size;
	int tries;
	double deadline;		/* monotonic */
	double next_event;
	ev_timer retry_timer;
	bool in_multi;
	bool started;			/* the first step ran (never inside upload_start) */
	bool cancelled;			/* upload_cancel(): over at the next loop turn */
	int open_errno;
	int rc;
	char err[ERR_MAX];
	char curl_err[CURL_ERROR_SIZE];
};

static void upload_next(struct upload *u);
static void upload_try(struct upload *u);

/* Finish the job's upload (ok or not) and tell the job. */
static void
upload_over(struct upload *u, int rc)
{
	u->rc = rc;
	ev_timer_stop(EV_DEFAULT, &u->retry_timer);
	u->done(u->job);
}

/* Report the current file's progress (an upload event): name, bytes so far, total. */
static void
upload_event(struct upload *u, uint64_t bytes, enum rq_kind kind)
{
	const struct artifact *a = collect_get(u->job->collect, u->cur);

	u->progress(u->job, a->name, bytes, u->size, u->items[u->cur].shown, kind);
}

/* A transfer is over (transfer.c): the next file, a retry, or the upload's end. */
static void
upload_ended(void *priv, CURLcode code, long http)
{
	struct upload *u = priv;
	char why[ERR_MAX];
	bool retry;

	u->in_multi = false;
	if (code == CURLE_OK && http >= 200 && http < 300) {
		const struct artifact *a = collect_get(u->job->collect, u->cur);
		u->items[u->cur].uploaded = true;
		upload_event(u, u->size, RQ_KEEP);
		log_info("job %s: uploaded %s (%llu bytes) to %s", u->job->id, a->name,
		    (unsigned long long)u->size, u->items[u->cur].shown);
		close(u->fd);
		u->fd = -1;
		u->cur++;
		upload_next(u);
		return;
	}
	if (code == CURLE_OK) {
		snprintf(why, sizeof why, "the server answered HTTP %ld", http);
		retry = http >= 500 || http == 408 || http == 429;
	} else {
		snprintf(why, sizeof why, "%s", u->curl_err[0] ? u->curl_err : transfer_cu.easy_strerror(code));
		retry = code == CURLE_COULDNT_CONNECT || code == CURLE_COULDNT_RESOLVE_HOST ||
		    code == CURLE_SEND_ERROR || code == CURLE_RECV_ERROR || code == CURLE_GOT_NOTHING ||
		    code == CURLE_PARTIAL_FILE || code == CURLE_SSL_CONNECT_ERROR ||
		    code == CURLE_HTTP2 || code == CURLE_HTTP2_STREAM || code == CURLE_OPERATION_TIMEDOUT;
	}
	double wait = wk->conf->upload_retry_backoff * pow(2, u->tries - 1);
	if (wait > UPLOAD_BACKOFF_MAX)
		wait = UPLOAD_BACKOFF_MAX;
	const struct artifact *a = collect_get(u->job->collect, u->cur);
	if (retry && now_mono() + wait < u->deadline) {
		log_notice("job %s: upload of %s to %s failed (%s); try %d in %.1f s", u->job->id, a->name,
		    u->items[u->cur].shown, why, u->tries + 1, wait);
		ev_timer_set(&u->retry_timer, wait, 0);
		ev_timer_start(EV_DEFAULT, &u->retry_timer);
		return;
	}
	snprintf(u->err, sizeof u->err, "upload of %.80s failed after %d %s%s: %s", a->name, u->tries,
	    u->tries == 1 ? "try" : "tries", retry ? " within upload_timeout" : "", why);
	log_err("job %s: %s (%s); the files are kept", u->job->id, u->err, u->items[u->cur].shown);
	upload_over(u, -1);
}

/* CURLOPT_READFUNCTION: the next bytes of the file. */
static size_t
upload_read_cb(char *buf, size_t size, size_t n, void *arg)
{
	struct upload *u = arg;
	ssize_t r;

	do
		r = read(u->fd, buf, size * n);
	while (r < 0 && errno == EINTR);
	return r < 0 ? CURL_READFUNC_ABORT : (size_t)r;
}

/* CURLOPT_SEEKFUNCTION: curl rewinds (a redirect refused, a resend). */
static int
upload_seek_cb(void *arg, curl_off_t off, int origin)
{
	struct upload *u = arg;

	return lseek(u->fd, (off_t)off, origin) < 0 ? CURL_SEEKFUNC_CANTSEEK : CURL_SEEKFUNC_OK;
}

/* CURLOPT_XFERINFOFUNCTION: an upload event now and then. */
static int
upload_progress_cb(void *arg, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal, curl_off_t ulnow)
{
	struct upload *u = arg;
	double t = now_mono();

	(void)dltotal;
	(void)dlnow;
	(void)ultotal;
	if (t >= u->next_event && ulnow > 0 && (uint64_t)ulnow < u->size) {
		u->next_event = t + UPLOAD_EVENT_EVERY;
		upload_event(u, (uint64_t)ulnow, RQ_DROP);
	}
	return 0;
}

/* The retry wait is over; or, the first time, the upload starts. */
static void
upload_retry_cb(EV_P_ ev_timer *w, int revents)
{
	struct upload *u = w->data;

	(void)loop;
	(void)revents;
	if (u->cancelled) {
		upload_over(u, -1);
		return;
	}
	if (u->started) {
		upload_try(u);
		return;
	}
	u->started = true;
	if (u->easy == NULL) {
		upload_over(u, -1);	/* libcurl could not be loaded: u->err says why */
		return;
	}
	if (u->dirfd < 0 && u->n > 0) {
		snprintf(u->err, sizeof u->err, "upload: cannot open the output directory: %s", strerror(u->open_errno));
		upload_over(u, -1);
		return;
	}
	upload_next(u);
}

/* One PUT of the current file from its start. */
static void
upload_try(struct upload *u)
{
	double left = u->deadline - now_mono();

	if (lseek(u->fd, 0, SEEK_SET) != 0) {
		snprintf(u->err, sizeof u->err, "upload: cannot rewind: %s", strerror(errno));
		upload_over(u, -1);
		return;
	}
	u->tries++;
	u->curl_err[0] = '\0';
	u->next_event = now_mono() + UPLOAD_EVENT_EVERY;
	transfer_cu.easy_setopt(u->easy, CURLOPT_TIMEOUT_MS, (long)(left > 1 ? left * 1000 : 1000));
	transfer_add(u->easy);
	u->in_multi = true;
}

/*
 * Open name below dirfd without following a symlink at any depth; a
 * regular file of the expected size, or -1 with err.
 */
static int
upload_open(int dirfd, const char *name, uint64_t size, char *err, size_t errlen)
{
	char *dup = xstrdup(name), *p = dup, *slash;
	int fd = fcntl(dirfd, F_DUPFD_CLOEXEC, 0), next;
	struct stat st;

	while (fd >= 0 && (slash = strchr(p, '/')) != NULL) {
		*slash = '\0';
		next = openat(fd, p, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		close(fd);
		fd = next;
		p = slash + 1;
	}
	if (fd >= 0) {
		next = openat(fd, p, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
		close(fd);
		fd = next;
	}
	free(dup);
	if (fd < 0) {
		snprintf(err, errlen, "%s", errno == ELOOP || errno == ENOTDIR ? "a symlink in its path (refused)" :
		    strerror(errno));
		return -1;
	}
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || (uint64_t)st.st_size != size) {
		close(fd);
		snprintf(err, errlen, "no longer the regular file of %llu bytes that was hashed",
		    (unsigned long long)size);
		return -1;
	}
	return fd;
}

/* Start on the next artifact, or report the upload done. */
static void
upload_next(struct upload *u)
{
	const struct artifact *a;
	char digest[64], e[ERR_MAX], *h;

	if (u->cur >= u->n) {
		upload_over(u, 0);
		return;
	}
	a = collect_get(u->job->collect, u->cur);
	if (upload_digest_b64(a->sha256, digest, sizeof digest) != 0) {
		snprintf(u->err, sizeof u->err, "upload of %.80s: it could not be hashed (%s)", a->name, a->sha256);
		upload_over(u, -1);
		return;
	}
	if ((u->fd = upload_open(u->dirfd, a->name, a->size, e, sizeof e)) < 0) {
		snprintf(u->err, sizeof u->err, "upload of %.80s: %s", a->name, e);
		upload_over(u, -1);
		return;
	}
	u->size = a->size;
	u->tries = 0;
	if (u->hdrs != NULL)
		transfer_cu.slist_free_all(u->hdrs);
	u->hdrs = NULL;
	for (size_t i = 0; i < u->job->spec.upload_headers.n; i++)
		u->hdrs = transfer_cu.slist_append(u->hdrs, u->job->spec.upload_headers.v[i]);
	h = xasprintf("Content-Digest: sha-256=:%s:", digest);
	u->hdrs = transfer_cu.slist_append(u->hdrs, h);
	free(h);
	u->hdrs = transfer_cu.slist_append(u->hdrs, "Content-Type: application/octet-stream");
	transfer_cu.easy_reset(u->easy);
	transfer_cu.easy_setopt(u->easy, CURLOPT_URL, u->items[u->cur].url);
	transfer_cu.easy_setopt(u->easy, CURLOPT_PROTOCOLS_STR, "http,https");
	transfer_cu.easy_setopt(u->easy, CURLOPT_UPLOAD, 1L);
	transfer_cu.easy_setopt(u->easy, CURLOPT_INFILESIZE_LARGE, (curl_off_t)a->size);
	transfer_cu.easy_setopt(u->easy, CURLOPT_READFUNCTION, upload_read_cb);
	transfer_cu.easy_setopt(u->easy, CURLOPT_READDATA, u);
	transfer_cu.easy_setopt(u->easy, CURLOPT_SEEKFUNCTION, upload_seek_cb);
	transfer_cu.easy_setopt(u->easy, CURLOPT_SEEKDATA, u);
	transfer_cu.easy_setopt(u->easy, CURLOPT_XFERINFOFUNCTION, upload_progress_cb);
	transfer_cu.easy_setopt(u->easy, CURLOPT_XFERINFODATA, u);
	transfer_cu.easy_setopt(u->easy, CURLOPT_NOPROGRESS, 0L);
	transfer_cu.easy_setopt(u->easy, CURLOPT_HTTPHEADER, u->hdrs);
	transfer_cu.easy_setopt(u->easy, CURLOPT_ERRORBUFFER, u->curl_err);
	transfer_cu.easy_setopt(u->easy, CURLOPT_PRIVATE, (char *)u);
	transfer_cu.easy_setopt(u->easy, CURLOPT_NOSIGNAL, 1L);
	transfer_cu.easy_setopt(u->easy, CURLOPT_CONNECTTIMEOUT, 30L);
	/* A connection that moves nothing for 60 s is dead: retry it. */
	transfer_cu.easy_setopt(u->easy, CURLOPT_LOW_SPEED_LIMIT, 1L);
	transfer_cu.easy_setopt(u->easy, CURLOPT_LOW_SPEED_TIME, 60L);
	transfer_cu.easy_setopt(u->easy, CURLOPT_FOLLOWLOCATION, 0L);
	transfer_cu.easy_setopt(u->easy, CURLOPT_USERAGENT, "debate-worker/" DEBATE_VERSION);
	upload_event(u, 0, RQ_KEEP);
	upload_try(u);
}

/* Upload j's artifacts from its output directory. */
struct upload *
upload_start(struct job *j, void (*progress)(struct job *j, const char *name, uint64_t bytes,
    uint64_t total, const char *url, enum rq_kind kind), void (*done)(struct job *))
{
	struct upload *u = xcalloc(1, sizeof *u);

	u->job = j;
	u->progress = progress;
	u->done = done;
	u->fd = -1;
	u->deadline = now_mono() + wk->conf->upload_timeout;
	ev_timer_init(&u->retry_timer, upload_retry_cb, 0, 0);
	u->retry_timer.data = u;
	u->n = collect_count(j->collect);
	u->items = xcalloc(u->n + 1, sizeof *u->items);
	for (size_t i = 0; i < u->n; i++) {
		u->items[i].url = upload_target(j->spec.upload_url, collect_get(j->collect, i)->name);
		u->items[i].shown = upload_display(u->items[i].url);
	}
	u->dirfd = open(j->output_path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	u->open_errno = errno;
	if (transfer_load(upload_ended, u->err, sizeof u->err) == 0 && (u->easy = transfer_cu.easy_init()) == NULL)
		snprintf(u->err, sizeof u->err, "upload: libcurl: out of memory");
	/* The first step runs from the loop: done() never comes before we return. */
	ev_timer_set(&u->retry_timer, 0, 0);
	ev_timer_start(EV_DEFAULT, &u->retry_timer);
	return u;
}

/* 0 when every artifact arrived, -1 with the reason. */
int
upload_result(const struct upload *u, const char **err)
{
	*err = u->err;
	return u->rc;
}

/* The shown URL of artifact i and whether it arrived. */
const char *
upload_url(const struct upload *u, size_t i, bool *uploaded)
{
	if (u == NULL || i >= u->n) {
		*uploaded = false;
		return NULL;
	}
	*uploaded = u->items[i].uploaded;
	return u->items[i].shown;
}

/*
 * A cancel: abandon the transfer in flight (or the retry's wait) now, and
 * report from the loop, not from inside the caller.  What arrived stays
 * marked uploaded; the rest is not.
 */
void
upload_cancel(struct upload *u)
{
	const struct artifact *a;

	if (u->cancelled || u->rc != 0 || u->done == NULL)
		return;
	u->cancelled = true;
	if (u->in_multi) {
		transfer_remove(u->easy);
		u->in_multi = false;
	}
	a = u->cur < u->n ? collect_get(u->job->collect, u->cur) : NULL;
	snprintf(u->err, sizeof u->err, "cancelled while uploading%s%s", a != NULL ? " " : "", a != NULL ? a->name : "");
	ev_timer_stop(EV_DEFAULT, &u->retry_timer);
	ev_timer_set(&u->retry_timer, 0, 0);
	ev_timer_start(EV_DEFAULT, &u->retry_timer);
}

/* Free an upload (a transfer in flight is abandoned). */
void
upload_free(struct upload *u)
{
	if (u == NULL)
		return;
	ev_timer_stop(EV_DEFAULT, &u->retry_timer);
	if (u->in_multi)
		transfer_remove(u->easy);
	if (u->easy != NULL)
		transfer_cu.easy_cleanup(u->easy);
	if (u->hdrs != NULL)
		transfer_cu.slist_free_all(u->hdrs);
	if (u->fd >= 0)
		close(u->fd);
	if (u->dirfd >= 0)
		close(u->dirfd);
	for (size_t i = 0; i < u->n; i++) {
		free(u->items[i].url);
		free(u->items[i].shown);
	}
	free(u->items);
	free(u);
}

/* At exit. */
void
upload_shutdown(void)
{
	transfer_shutdown();
}
