/*
 * rconn.h: what the two halves of a Redis connection share, and nothing
 * else includes: rconn.c (connect, handshake, sentinels, reconnect
 * backoff) and rconnqueue.c (the outbox, the one retry policy for
 * refused commands, script calls, the rate-limited error log).  The
 * interface is in worker.h; rconn.c calls rconnqueue.c, never back.
 */
#ifndef RCONN_H
#define RCONN_H

#include "worker.h"

struct rcmd {
	TAILQ_ENTRY(rcmd) entry;
	struct rconn *rc;
	char *buf;		/* the RESP-formatted command */
	size_t len;
	enum rq_kind kind;
	rq_cb *cb;
	void *arg;
	int script;		/* enum script_id, or -1 */
};
TAILQ_HEAD(rcmds, rcmd);

struct rconn {
	const char *name;
	bool has_outbox;
	redisAsyncContext *ac;
	redisAsyncContext *sac;	/* sentinel query in progress */
	bool up;
	int handshake;		/* replies still expected before up */
	struct rcmds pending;	/* not sent yet */
	struct rcmds replay;	/* sent, lost with a connection: sent again first */
	struct rcmds inflight;	/* sent, no reply yet */
	size_t bytes;
	double backoff;
	ev_timer retry;
	ev_timer connect_timer;
	void (*on_up)(struct rconn *);
	void (*on_down)(struct rconn *);
	unsigned long reconnects;
	bool ever_up;
	bool closing;
	bool error_drop;	/* dropped for an error reply: keep backing off */
	char drop_why[160];	/* that error, for the reconnect's log line */
	bool held;		/* a command was refused (BUSY & co.): send nothing new */
	bool hold_due;		/* the retry time came: resend once nothing is in flight */
	bool reload;		/* NOSCRIPT seen: load the scripts before resending */
	double hold_backoff;
	ev_timer hold_timer;
	unsigned long retried;	/* commands sent again after a refusal */
	struct ratelog {
		char key[48];
		double last;
		unsigned long suppressed;
	} ratelog[4];
	size_t sentinel_next;
	char *master_host;
	int master_port;
};

/* --- rconnqueue.c --- */

/* Log a line about an error at most once per 10 s per key (rate-limited). */
void rconn_log(struct rconn *rc, enum log_level level, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Free a command (and take its bytes off the outbox). */
void rcmd_free(struct rcmd *c);
/* Send what waits: the replayed commands first, then the pending ones. */
void rconn_flush(struct rconn *rc);
/* SCRIPT LOAD every script on rc's context, each answered to fn; returns how many. */
int rconn_load_scripts(struct rconn *rc, redisCallbackFn *fn);
/* The hold timer's callback (rconn_new starts it as rc->hold_timer). */
void rconn_hold_cb(EV_P_ ev_timer *w, int revents);

#endif
