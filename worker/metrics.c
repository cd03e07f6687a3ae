/*
 * metrics.c: a Prometheus text endpoint (metrics_listen = host:port),
 * served by libmicrohttpd driven from our own loop: MHD runs in epoll
 * mode without threads, and an ev_io on its epoll fd plus a timer for
 * its timeouts call mhd.run().  Off unless configured.
 *
 * libmicrohttpd brings a TLS stack with it (gnutls and friends, some two
 * megabytes resident): it is loaded with dlopen() only when metrics are
 * turned on, so a worker without them does not carry it.
 */
#include <arpa/inet.h>
#include <dlfcn.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

#include "job.h"

static struct {
	__typeof__(&MHD_start_daemon) start_daemon;
	__typeof__(&MHD_stop_daemon) stop_daemon;
	__typeof__(&MHD_get_daemon_info) get_daemon_info;
	__typeof__(&MHD_run) run;
	__typeof__(&MHD_get_timeout) get_timeout;
	__typeof__(&MHD_create_response_from_buffer) create_response_from_buffer;
	__typeof__(&MHD_add_response_header) add_response_header;
	__typeof__(&MHD_queue_response) queue_response;
	__typeof__(&MHD_destroy_response) destroy_response;
} mhd;
static struct MHD_Daemon *metrics_d;
static ev_io metrics_io;
static ev_timer metrics_timer;
long long metrics_queue_len = -1;

static const double metrics_buckets[] = { 1, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600 };
#define NBUCKETS (sizeof metrics_buckets / sizeof metrics_buckets[0])

/* Count one build's duration in the histogram. */
void
metrics_duration(double secs)
{
	for (size_t i = 0; i < NBUCKETS; i++)
		if (secs <= metrics_buckets[i])
			wk->m.hist[i]++;
	wk->m.duration_sum += secs;
	wk->m.duration_count++;
}

/* Append printf output to a growing buffer. */
static void
metrics_add(char **buf, size_t *len, const char *fmt, ...)
{
	va_list ap;
	char *s;
	int n;

	va_start(ap, fmt);
	n = vasprintf(&s, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	*buf = xrealloc(*buf, *len + (size_t)n + 1);
	memcpy(*buf + *len, s, (size_t)n + 1);
	*len += (size_t)n;
	free(s);
}

/* The exposition text. */
static char *
metrics_text(size_t *len)
{
	char *b = NULL;
	long running = 0;
	struct job *j;

	*len = 0;
	TAILQ_FOREACH(j, &wk->jobs, entry)
		running += j->state == JOB_RUNNING || j->state == JOB_STOPPING;
	metrics_add(&b, len, "# HELP debate_jobs_total Jobs finished, by final status.\n"
	    "# TYPE debate_jobs_total counter\n");
	for (int s = ST_SUCCEEDED; s <= ST_ERROR; s++)
		metrics_add(&b, len, "debate_jobs_total{status=\"%s\"} %lu\n", status_name((enum status)s),
		    wk->m.jobs_by_status[s]);
	metrics_add(&b, len, "# HELP debate_jobs_refused_total Payloads sent to the dead list.\n"
	    "# TYPE debate_jobs_refused_total counter\ndebate_jobs_refused_total %lu\n", wk->m.refused);
	metrics_add(&b, len, "# HELP debate_results_refused_total Results refused because the lease was lost.\n"
	    "# TYPE debate_results_refused_total counter\ndebate_results_refused_total %lu\n",
	    wk->m.results_refused);
	metrics_add(&b, len, "# HELP debate_build_duration_seconds Build durations.\n"
	    "# TYPE debate_build_duration_seconds histogram\n");
	for (size_t i = 0; i < NBUCKETS; i++)
		metrics_add(&b, len, "debate_build_duration_seconds_bucket{le=\"%g\"} %lu\n", metrics_buckets[i],
		    wk->m.hist[i]);
	metrics_add(&b, len, "debate_build_duration_seconds_bucket{le=\"+Inf\"} %lu\n"
	    "debate_build_duration_seconds_sum %.3f\ndebate_build_duration_seconds_count %lu\n",
	    wk->m.duration_count, wk->m.duration_sum, wk->m.duration_count);
	metrics_add(&b, len, "# HELP debate_running_jobs Builds running now.\n"
	    "# TYPE debate_running_jobs gauge\ndebate_running_jobs %ld\n", running);
	metrics_add(&b, len, "# HELP debate_free_slots Slots free for new jobs.\n"
	    "# TYPE debate_free_slots gauge\ndebate_free_slots %ld\n",
	    wk->draining ? 0 : (wk->slots > wk->held ? wk->slots - wk->held : 0));
	metrics_add(&b, len, "# HELP debate_queue_length Jobs waiting, as of the last heartbeat.\n"
	    "# TYPE debate_queue_length gauge\ndebate_queue_length %lld\n", metrics_queue_len);
	metrics_add(&b, len, "# HELP debate_redis_reconnects_total Redis connections lost or refused.\n"
	    "# TYPE debate_redis_reconnects_total counter\ndebate_redis_reconnects_total %lu\n",
	    rconn_reconnects(wk->cmd) + (wk->fetch ? rconn_reconnects(wk->fetch) : 0));
	metrics_add(&b, len, "# HELP debate_redis_retried_total Commands sent again after Redis refused them.\n"
	    "# TYPE debate_redis_retried_total counter\ndebate_redis_retried_total %lu\n",
	    rconn_retried(wk->cmd));
	metrics_add(&b, len, "# HELP debate_log_lines_published_total Build output lines published.\n"
	    "# TYPE debate_log_lines_published_total counter\ndebate_log_lines_published_total %lu\n",
	    wk->m.lines_published);
	metrics_add(&b, len, "# HELP debate_log_lines_dropped_total Build output lines dropped (caps, outages).\n"
	    "# TYPE debate_log_lines_dropped_total counter\ndebate_log_lines_dropped_total %lu\n",
	    wk->m.lines_dropped);
	metrics_add(&b, len, "# HELP debate_events_buffered_bytes Bytes of commands waiting for Redis.\n"
	    "# TYPE debate_events_buffered_bytes gauge\ndebate_events_buffered_bytes %zu\n",
	    rconn_outbox_bytes(wk->cmd));
	return b;
}

/* MHD's request handler: GET /metrics. */
static enum MHD_Result
metrics_handler(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
    const char *version, const char *upload, size_t *upload_len, void **con_cls)
{
	struct MHD_Response *resp;
	enum MHD_Result ret;
	unsigned code = MHD_HTTP_OK;
	char *body;
	size_t len;

	(void)cls;
	(void)version;
	(void)upload;
	(void)upload_len;
	(void)con_cls;
	if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0) {
		body = xstrdup("only GET\n");
		len = strlen(body);
		code = MHD_HTTP_METHOD_NOT_ALLOWED;
	} else if (strcmp(url, "/metrics") != 0 && strcmp(url, "/") != 0) {
		body = xstrdup("not found: try /metrics\n");
		len = strlen(body);
		code = MHD_HTTP_NOT_FOUND;
	} else
		body = metrics_text(&len);
	resp = mhd.create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
	mhd.add_response_header(resp, "Content-Type", "text/plain; version=0.0.4; charset=utf-8");
	ret = mhd.queue_response(conn, code, resp);
	mhd.destroy_response(resp);
	return ret;
}

/* Let MHD work, then re-arm its timeout. */
static void
metrics_run(void)
{
	MHD_UNSIGNED_LONG_LONG ms;

	mhd.run(metrics_d);
	ev_timer_stop(EV_DEFAULT, &metrics_timer);
	if (mhd.get_timeout(metrics_d, &ms) == MHD_YES) {
		ev_timer_set(&metrics_timer, (double)ms / 1000.0, 0);
		ev_timer_start(EV_DEFAULT, &metrics_timer);
	}
}

/* MHD's epoll fd is readable. */
static void
metrics_io_cb(EV_P_ ev_io *w, int revents)
{
	(void)loop;
	(void)w;
	(void)revents;
	metrics_run();
}

/* MHD's timeout. */
static void
metrics_timer_cb(EV_P_ ev_timer *w, int revents)
{
	(void)loop;
	(void)w;
	(void)revents;
	metrics_run();
}

/* Load libmicrohttpd and find what we call. */
static int
metrics_load(char *err, size_t errlen)
{
	void *h = dlopen("libmicrohttpd.so.12", RTLD_NOW | RTLD_LOCAL);

	if (h == NULL) {
		snprintf(err, errlen, "metrics_listen: cannot load libmicrohttpd: %s", dlerror());
		return -1;
	}
#define SYM(f)                                                                 \
	if ((*(void **)&mhd.f = dlsym(h, "MHD_" #f)) == NULL) {                \
		snprintf(err, errlen, "metrics_listen: libmicrohttpd lacks MHD_%s", #f); \
		return -1;                                                     \
	}
	SYM(start_daemon)
	SYM(stop_daemon)
	SYM(get_daemon_info)
	SYM(run)
	SYM(get_timeout)
	SYM(create_response_from_buffer)
	SYM(add_response_header)
	SYM(queue_response)
	SYM(destroy_response)
#undef SYM
	return 0;
}

/* Listen on "host:port" (IPv4). */
int
metrics_start(const char *listen, char *err, size_t errlen)
{
	struct sockaddr_in sa = { .sin_family = AF_INET };
	const union MHD_DaemonInfo *info;
	const char *colon = strrchr(listen, ':');
	char host[64];
	long port;

	if (colon == NULL || (size_t)(colon - listen) >= sizeof host ||
	    (port = strtol(colon + 1, NULL, 10)) <= 0 || port > 65535) {
		snprintf(err, errlen, "metrics_listen: \"%s\" is not host:port", listen);
		return -1;
	}
	snprintf(host, sizeof host, "%.*s", (int)(colon - listen), listen);
	if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
		snprintf(err, errlen, "metrics_listen: \"%s\" is not an IPv4 address", host);
		return -1;
	}
	sa.sin_port = htons((uint16_t)port);
	if (metrics_load(err, errlen) != 0)
		return -1;
	metrics_d = mhd.start_daemon(MHD_USE_EPOLL, (uint16_t)port, NULL, NULL, metrics_handler, NULL,
	    MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa, MHD_OPTION_CONNECTION_LIMIT, 16U,
	    MHD_OPTION_CONNECTION_TIMEOUT, 10U, MHD_OPTION_END);
	if (metrics_d == NULL) {
		snprintf(err, errlen, "metrics_listen: cannot listen on %s", listen);
		return -1;
	}
	info = mhd.get_daemon_info(metrics_d, MHD_DAEMON_INFO_EPOLL_FD);
	ev_io_init(&metrics_io, metrics_io_cb, info->epoll_fd, EV_READ);
	ev_io_start(EV_DEFAULT, &metrics_io);
	ev_timer_init(&metrics_timer, metrics_timer_cb, 0, 0);
	log_info("metrics on http://%s/metrics", listen);
	return 0;
}

/* Stop serving. */
void
metrics_stop(void)
{
	if (metrics_d == NULL)
		return;
	ev_io_stop(EV_DEFAULT, &metrics_io);
	ev_timer_stop(EV_DEFAULT, &metrics_timer);
	mhd.stop_daemon(metrics_d);
	metrics_d = NULL;
}
