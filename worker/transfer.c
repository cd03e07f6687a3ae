/*
 * transfer.c: libcurl, driven by the libev loop.
 *
 * One curl multi handle for the process: curl tells us (socket callback)
 * which sockets to watch for what, and (timer callback) when to call it
 * back; we call multi_socket_action() from ev_io and ev_timer watchers.
 * So uploads never block other jobs, their pipes or the heartbeat.
 * upload.c sets up each transfer (one easy handle per job's upload) and
 * hears here when one is over.
 */
#include <dlfcn.h>
#include <stdlib.h>

#include "transfer.h"

struct transfer_sock {
	ev_io io;
	curl_socket_t fd;
};

struct transfer_curl transfer_cu;
static bool cu_loaded;
static CURLM *multi;
static ev_timer multi_timer;
static void (*transfer_ended)(void *priv, CURLcode code, long http);

/* Hand each transfer curl says is over to its owner. */
static void
transfer_check_done(void)
{
	CURLMsg *m;
	int left;

	while ((m = transfer_cu.multi_info_read(multi, &left)) != NULL) {
		CURLcode code = m->data.result;
		void *priv = NULL;
		long http = 0;

		if (m->msg != CURLMSG_DONE)
			continue;
		transfer_cu.easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&priv);
		transfer_cu.easy_getinfo(m->easy_handle, CURLINFO_RESPONSE_CODE, &http);
		transfer_cu.multi_remove_handle(multi, m->easy_handle);
		transfer_ended(priv, code, http);
	}
}

/* A socket curl watches is ready. */
static void
transfer_io_cb(EV_P_ ev_io *w, int revents)
{
	struct transfer_sock *s = w->data;
	int running, action = (revents & EV_READ ? CURL_CSELECT_IN : 0) | (revents & EV_WRITE ? CURL_CSELECT_OUT : 0);

	(void)loop;
	transfer_cu.multi_socket_action(multi, s->fd, action, &running);
	transfer_check_done();
}

/* curl's timeout is due. */
static void
transfer_timer_cb(EV_P_ ev_timer *w, int revents)
{
	int running;

	(void)loop;
	(void)w;
	(void)revents;
	transfer_cu.multi_socket_action(multi, CURL_SOCKET_TIMEOUT, 0, &running);
	transfer_check_done();
}

/* CURLMOPT_SOCKETFUNCTION: watch s for what curl wants, or stop. */
static int
transfer_sock_cb(CURL *e, curl_socket_t fd, int what, void *userp, void *sockp)
{
	struct transfer_sock *s = sockp;
	int events = (what & CURL_POLL_IN ? EV_READ : 0) | (what & CURL_POLL_OUT ? EV_WRITE : 0);

	(void)e;
	(void)userp;
	if (what == CURL_POLL_REMOVE) {
		if (s != NULL) {
			ev_io_stop(EV_DEFAULT, &s->io);
			transfer_cu.multi_assign(multi, fd, NULL);
			defer_free(free, s);	/* we may be inside its own callback */
		}
		return 0;
	}
	if (s == NULL) {
		s = xcalloc(1, sizeof *s);
		s->fd = fd;
		ev_init(&s->io, transfer_io_cb);
		s->io.data = s;
		transfer_cu.multi_assign(multi, fd, s);
	}
	ev_io_stop(EV_DEFAULT, &s->io);
	ev_io_set(&s->io, fd, events);
	ev_io_start(EV_DEFAULT, &s->io);
	return 0;
}

/* CURLMOPT_TIMERFUNCTION: call us back in ms (-1: no timer). */
static int
transfer_multi_timer(CURLM *m, long ms, void *userp)
{
	(void)m;
	(void)userp;
	ev_timer_stop(EV_DEFAULT, &multi_timer);
	if (ms >= 0) {
		ev_timer_set(&multi_timer, (double)ms / 1000.0, 0);
		ev_timer_start(EV_DEFAULT, &multi_timer);
	}
	return 0;
}

/* Load libcurl and set up the multi handle, once; -1 with err when it cannot be. */
int
transfer_load(void (*ended)(void *priv, CURLcode code, long http), char *err, size_t errlen)
{
	void *h;

	transfer_ended = ended;
	if (cu_loaded)
		return 0;
	if ((h = dlopen("libcurl.so.4", RTLD_NOW | RTLD_LOCAL)) == NULL) {
		snprintf(err, errlen, "upload: libcurl cannot be loaded: %s", dlerror());
		return -1;
	}
#define SYM(f)                                                                 \
	if ((*(void **)&transfer_cu.f = dlsym(h, "curl_" #f)) == NULL) {                \
		snprintf(err, errlen, "upload: libcurl lacks curl_%s", #f);    \
		dlclose(h);                                                    \
		return -1;                                                     \
	}
	SYM(easy_cleanup)
	SYM(easy_getinfo)
	SYM(easy_init)
	SYM(easy_reset)
	SYM(easy_setopt)
	SYM(easy_strerror)
	SYM(global_cleanup)
	SYM(global_init)
	SYM(multi_add_handle)
	SYM(multi_assign)
	SYM(multi_cleanup)
	SYM(multi_info_read)
	SYM(multi_init)
	SYM(multi_remove_handle)
	SYM(multi_setopt)
	SYM(multi_socket_action)
	SYM(slist_append)
	SYM(slist_free_all)
#undef SYM
	if (transfer_cu.global_init(CURL_GLOBAL_DEFAULT) != 0 || (multi = transfer_cu.multi_init()) == NULL) {
		snprintf(err, errlen, "upload: libcurl cannot be initialised");
		return -1;
	}
	transfer_cu.multi_setopt(multi, CURLMOPT_SOCKETFUNCTION, transfer_sock_cb);
	transfer_cu.multi_setopt(multi, CURLMOPT_TIMERFUNCTION, transfer_multi_timer);
	ev_timer_init(&multi_timer, transfer_timer_cb, 0, 0);
	cu_loaded = true;
	return 0;
}

/* Start easy's transfer in the multi handle. */
void
transfer_add(CURL *easy)
{
	transfer_cu.multi_add_handle(multi, easy);
}

/* Take easy's transfer out of the multi handle. */
void
transfer_remove(CURL *easy)
{
	transfer_cu.multi_remove_handle(multi, easy);
}

/* At exit: the multi handle and libcurl's globals. */
void
transfer_shutdown(void)
{
	if (multi == NULL)
		return;
	ev_timer_stop(EV_DEFAULT, &multi_timer);
	transfer_cu.multi_cleanup(multi);
	multi = NULL;
	transfer_cu.global_cleanup();
}
