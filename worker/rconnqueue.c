/*
 * rconnqueue.c: the commands of a Redis connection, and what happens
 * when Redis refuses one.
 *
 * A command is formatted once (rconn_format), then sent at once or queued
 * in the outbox: `pending` while it waits behind others or for the
 * connection, `inflight` once hiredis has it, `replay` when it must be
 * sent again (its connection was lost, or Redis refused it).  Scripts go
 * the same way as EVALSHA (script_call); the connection loads them at its
 * handshake and again after a NOSCRIPT.  Log batches (RQ_DROP) may be
 * dropped when the outbox is full; results never are.
 *
 * The retry policy (rconn_classify) sorts every error reply into one of
 * three kinds, and nothing else in the worker decides whether to retry:
 *   - reconnect (READONLY, MASTERDOWN, NOREPLICAS): this server cannot
 *     take writes, a failover may be under way: drop the connection, find
 *     the master again (through the sentinels) and send it again there;
 *   - retry (BUSY, LOADING, MISCONF, OOM, NOSCRIPT, TRYAGAIN, CLUSTERDOWN):
 *     Redis refused the command before it ran (a script of someone else
 *     still runs, a failed RDB save or maxmemory stops writes, the script
 *     cache was flushed): keep the connection, hold every command not yet
 *     sent, and after a backoff (0.05 s doubling to 2 s; none after a
 *     NOSCRIPT, which reloads the scripts first) send the refused ones
 *     again, in the order they were first sent, ahead of the held ones;
 *   - anything else is the command's answer, and its callback sees it.
 * RQ_KEEP and RQ_DROP commands are retried for as long as it takes (the
 * outbox limit keeps log batches from piling up behind them); RQ_ONCE ones
 * (heartbeats) are not: their callback sees the error, and while commands
 * are held they are answered NULL at once.  Redis refuses a script for
 * these errors before its first write (a script without flags is checked
 * at its first write command), so sending it again is safe; every script
 * is also safe to repeat (PROTOCOL.md, "Lost replies").  Commands sent
 * behind a refused one may still run before it is sent again (the error
 * cleared in between): each script checks the job's state itself.
 *
 * Invariant: every command sent is in `inflight` until hiredis calls its
 * callback, which hiredis does in order, with a NULL reply for each one
 * outstanding when the connection is freed.
 */
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "rconn.h"

static void rconn_write(struct rconn *rc, struct rcmd *c);

#define RCONN_LOG_EVERY 10.0	/* seconds between two lines about the same error */

/*
 * Log a line about key (an error) at most once per RCONN_LOG_EVERY
 * seconds; the next line that gets out says how many were held back.
 * A few distinct keys are tracked per connection, the oldest replaced.
 */
void
rconn_log(struct rconn *rc, enum log_level level, const char *key, const char *fmt, ...)
{
	struct ratelog *slot = NULL, *oldest = &rc->ratelog[0];
	double now = now_mono();
	char line[512];
	va_list ap;

	for (size_t i = 0; i < sizeof rc->ratelog / sizeof rc->ratelog[0]; i++) {
		struct ratelog *l = &rc->ratelog[i];
		if (strncmp(l->key, key, sizeof l->key - 1) == 0 && l->key[0] != '\0')
			slot = l;
		if (l->last < oldest->last)
			oldest = l;
	}
	if (slot != NULL && now - slot->last < RCONN_LOG_EVERY) {
		slot->suppressed++;
		return;
	}
	if (slot == NULL) {
		slot = oldest;
		snprintf(slot->key, sizeof slot->key, "%s", key);
		slot->suppressed = 0;
	}
	va_start(ap, fmt);
	vsnprintf(line, sizeof line, fmt, ap);
	va_end(ap);
	if (slot->suppressed > 0)
		log_msg(level, "%s (%lu more like it in the last %.0f s)", line, slot->suppressed,
		    now - slot->last);
	else
		log_msg(level, "%s", line);
	slot->last = now;
	slot->suppressed = 0;
}

/*
 * The retry policy: what an error reply means for the command that got
 * it (see the comment at the top).  Matched on the error code, the first
 * word, exactly: BUSYKEY is not BUSY.
 */
enum reply_class
rconn_classify(const redisReply *r)
{
	static const char *const reconnect[] = { "READONLY", "MASTERDOWN", "NOREPLICAS", NULL };
	static const char *const retry[] = { "BUSY", "LOADING", "MISCONF", "OOM", "NOSCRIPT",
		"TRYAGAIN", "CLUSTERDOWN", NULL };
	size_t n;

	if (r == NULL || r->type != REDIS_REPLY_ERROR || r->str == NULL)
		return REPLY_ANSWER;
	n = strcspn(r->str, " ");
	for (const char *const *p = reconnect; *p != NULL; p++)
		if (strlen(*p) == n && strncmp(r->str, *p, n) == 0)
			return REPLY_RECONNECT;
	for (const char *const *p = retry; *p != NULL; p++)
		if (strlen(*p) == n && strncmp(r->str, *p, n) == 0)
			return REPLY_RETRY;
	return REPLY_ANSWER;
}

/* Whether r is an error reply starting with prefix. */
bool
reply_is_error(const redisReply *r, const char *prefix)
{
	return r != NULL && r->type == REDIS_REPLY_ERROR &&
	    strncmp(r->str, prefix, strlen(prefix)) == 0;
}

/* Free a command. */
void
rcmd_free(struct rcmd *c)
{
	c->rc->bytes -= c->len;
	free(c->buf);
	free(c);
}

/* A SCRIPT LOAD sent after a NOSCRIPT: when it fails, load again next time. */
static void
rconn_load_reply(redisAsyncContext *ac, void *reply, void *priv)
{
	struct rconn *rc = priv;
	redisReply *r = reply;

	if (rc->ac == ac && (r == NULL || r->type == REDIS_REPLY_ERROR))
		rc->reload = true;
}

/* The retry time came and nothing is in flight: send the refused commands again. */
static void
rconn_resume(struct rconn *rc)
{
	struct rcmd *c;

	rc->held = rc->hold_due = false;
	if (!rc->up || rc->ac == NULL)
		return;	/* the next connection sends them */
	if (rc->reload) {
		rc->reload = false;
		rconn_load_scripts(rc, rconn_load_reply);
	}
	TAILQ_FOREACH(c, &rc->replay, entry)
		rc->retried++;
	rconn_flush(rc);
}

/* The hold timer: resend now, or as soon as the last command in flight is answered. */
void
rconn_hold_cb(EV_P_ ev_timer *w, int revents)
{
	struct rconn *rc = w->data;

	(void)loop;
	(void)revents;
	rc->hold_due = true;
	if (TAILQ_EMPTY(&rc->inflight))
		rconn_resume(rc);
}

/*
 * Redis refused c before running it (BUSY & co.): keep it, in the order
 * it was sent, hold what is not sent yet, and send it again after the
 * backoff.  The commands in flight behind it come back first, refused
 * too (kept behind it) or answered.
 */
static void
rconn_hold(struct rconn *rc, struct rcmd *c, const redisReply *r)
{
	bool noscript = reply_is_error(r, "NOSCRIPT");
	char key[16];

	TAILQ_INSERT_TAIL(&rc->replay, c, entry);
	if (noscript)
		rc->reload = true;
	if (rc->held)
		return;
	rc->held = true;
	rc->hold_due = false;
	if (noscript)
		ev_timer_set(&rc->hold_timer, 0, 0);
	else {
		rc->hold_backoff = rc->hold_backoff == 0 ? 0.05 : rc->hold_backoff * 2;
		if (rc->hold_backoff > 2)
			rc->hold_backoff = 2;
		ev_timer_set(&rc->hold_timer, rc->hold_backoff, 0);
	}
	snprintf(key, sizeof key, "%.*s", (int)strcspn(r->str, " "), r->str);
	rconn_log(rc, noscript ? LOG_NOTICE : LOG_WARN, key,
	    "redis %s: %s; sending the refused commands again in %.2f s (%zu bytes waiting)", rc->name,
	    r->str, noscript ? 0.0 : rc->hold_backoff, rc->bytes);
	ev_timer_start(EV_DEFAULT, &rc->hold_timer);
}

/* A command succeeded: the server is good again, the backoffs start over. */
static void
rconn_good(struct rconn *rc)
{
	rc->hold_backoff = 0;
	if (rc->error_drop) {
		rc->error_drop = false;
		rc->backoff = 0;
	}
}

/* The caller saw a command succeed on rc (the fetch's own BLMOVE). */
void
rconn_ok(struct rconn *rc)
{
	rconn_good(rc);
}

/* hiredis's reply callback for every queued command. */
static void
rconn_reply(redisAsyncContext *ac, void *reply, void *priv)
{
	struct rcmd *c = priv;
	struct rconn *rc = c->rc;
	redisReply *r = reply;

	(void)ac;
	TAILQ_REMOVE(&rc->inflight, c, entry);
	if (r == NULL) {
		/* The connection went away with this command unanswered. */
		if (c->kind == RQ_ONCE) {
			if (c->cb != NULL)
				c->cb(NULL, c->arg);
			rcmd_free(c);
		} else
			TAILQ_INSERT_TAIL(&rc->replay, c, entry);
		return;
	}
	switch (rconn_classify(r)) {
	case REPLY_RECONNECT:
		/*
		 * A replica after a failover, or a master cut off from its
		 * replicas (min-replicas-to-write: a failover may be under way):
		 * find the master again.
		 */
		TAILQ_INSERT_TAIL(&rc->replay, c, entry);
		if (rc->up) {
			/* Once per connection: the other commands in flight get the same answer. */
			rconn_log(rc, LOG_WARN, "reconnect", "redis %s: %s; reconnecting", rc->name, r->str);
			rc->up = false;
			rc->error_drop = true;
			snprintf(rc->drop_why, sizeof rc->drop_why, "%s", r->str);
			redisAsyncDisconnect(rc->ac);
		}
		return;
	case REPLY_RETRY:
		if (c->kind != RQ_ONCE) {
			rconn_hold(rc, c, r);
			/* The hold timer may have fired already, waiting for this last one. */
			if (rc->hold_due && TAILQ_EMPTY(&rc->inflight))
				rconn_resume(rc);
			return;
		}
		break;	/* a heartbeat is not sent again: its callback sees the error */
	case REPLY_ANSWER:
		if (r->type != REDIS_REPLY_ERROR)
			rconn_good(rc);
		break;
	}
	if (c->cb != NULL)
		c->cb(r, c->arg);
	rcmd_free(c);
	if (rc->held && rc->hold_due && TAILQ_EMPTY(&rc->inflight))
		rconn_resume(rc);
}

/* Hand a command to hiredis now. */
static void
rconn_write(struct rconn *rc, struct rcmd *c)
{
	TAILQ_INSERT_TAIL(&rc->inflight, c, entry);
	if (redisAsyncFormattedCommand(rc->ac, rconn_reply, c, c->buf, c->len) != REDIS_OK) {
		/* Only when the context is shutting down: keep it for the next one. */
		TAILQ_REMOVE(&rc->inflight, c, entry);
		TAILQ_INSERT_TAIL(&rc->replay, c, entry);
	}
}

/*
 * Send what waits, the replayed commands (sent before, lost or refused)
 * first, in their order.  Off the lists first: a write that fails puts
 * its command back on replay, for the next connection.
 */
void
rconn_flush(struct rconn *rc)
{
	struct rcmds todo;
	struct rcmd *c;

	TAILQ_INIT(&todo);
	TAILQ_CONCAT(&todo, &rc->replay, entry);
	TAILQ_CONCAT(&todo, &rc->pending, entry);
	while ((c = TAILQ_FIRST(&todo)) != NULL) {
		TAILQ_REMOVE(&todo, c, entry);
		rconn_write(rc, c);
	}
}

/* What rconn_scripts() registered. */
static const struct rconn_script *rconn_script_table;

/* Register the scripts; see worker.h. */
void
rconn_scripts(const struct rconn_script *table)
{
	rconn_script_table = table;
}

/* SCRIPT LOAD every script (at the handshake, and after a NOSCRIPT); returns how many. */
int
rconn_load_scripts(struct rconn *rc, redisCallbackFn *fn)
{
	if (rconn_script_table == NULL)
		return 0;
	for (int i = 0; i < SCRIPT_COUNT; i++) {
		const char *argv[] = { "SCRIPT", "LOAD", rconn_script_table[i].body };
		redisAsyncCommandArgv(rc->ac, fn, rc, 3, argv, NULL);
	}
	return SCRIPT_COUNT;
}

/*
 * argv as a RESP array of bulk strings, in one allocation: what
 * redisFormatCommandArgv makes, without its sprintf per argument (a
 * fifth of the worker's instructions per job).
 */
static int
rconn_format(char **out, int argc, const char **argv, const size_t *argvlen)
{
	size_t total = 1 + 20 + 2;
	char *buf, *p;

	for (int i = 0; i < argc; i++)
		total += 1 + 20 + 2 + (argvlen ? argvlen[i] : strlen(argv[i])) + 2;
	if ((buf = malloc(total + 1)) == NULL)
		return -1;
	p = buf;
	*p++ = '*';
	p = fmt_uint(p, (uint64_t)argc);
	*p++ = '\r';
	*p++ = '\n';
	for (int i = 0; i < argc; i++) {
		size_t n = argvlen ? argvlen[i] : strlen(argv[i]);
		*p++ = '$';
		p = fmt_uint(p, n);
		*p++ = '\r';
		*p++ = '\n';
		memcpy(p, argv[i], n);
		p += n;
		*p++ = '\r';
		*p++ = '\n';
	}
	*p = '\0';
	*out = buf;
	return (int)(p - buf);
}

/* A command formatted from argv; NULL when it is a log batch to drop. */
static struct rcmd *
rcmd_new(struct rconn *rc, enum rq_kind kind, rq_cb *cb, void *arg, int argc, const char **argv,
    const size_t *argvlen)
{
	struct rcmd *c;
	char *buf;
	int len;

	if (kind == RQ_DROP && rc->bytes > wk->conf->outbox_max)
		return NULL;
	if ((len = rconn_format(&buf, argc, argv, argvlen)) < 0)
		fatalx("out of memory formatting a Redis command");
	c = xcalloc(1, sizeof *c);
	c->rc = rc;
	c->buf = buf;
	c->len = (size_t)len;
	c->kind = kind;
	c->cb = cb;
	c->arg = arg;
	c->script = -1;
	rc->bytes += c->len;
	return c;
}

/*
 * Send c now, or queue it behind what waits.  Without an outbox (the
 * fetch connection) or for RQ_ONCE, a command that cannot go now (down,
 * or held after a refusal) is answered NULL at once.
 */
static void
rconn_enqueue(struct rconn *rc, struct rcmd *c)
{
	if ((!rc->up || rc->held) && (!rc->has_outbox || c->kind == RQ_ONCE)) {
		if (c->cb != NULL)
			c->cb(NULL, c->arg);
		rcmd_free(c);
		return;
	}
	if (rc->up && !rc->held && TAILQ_EMPTY(&rc->pending) && TAILQ_EMPTY(&rc->replay))
		rconn_write(rc, c);
	else
		TAILQ_INSERT_TAIL(&rc->pending, c, entry);
}

/* Queue or send a command; see worker.h.  A dropped log batch is answered NULL. */
void
rconn_send(struct rconn *rc, enum rq_kind kind, rq_cb *cb, void *arg, int argc, const char **argv,
    const size_t *argvlen)
{
	struct rcmd *c = rcmd_new(rc, kind, cb, arg, argc, argv, argvlen);

	if (c == NULL) {
		if (cb != NULL)
			cb(NULL, arg);
		return;
	}
	rconn_enqueue(rc, c);
}

/* Call a script by its sha; a NOSCRIPT answer loads it and calls again. */
void
script_call(struct rconn *rc, enum script_id id, enum rq_kind kind, rq_cb *cb, void *arg,
    int nkeys, int nargs, const char **args, const size_t *lens)
{
	const char **argv = xcalloc((size_t)nargs + 3, sizeof *argv);
	size_t *argvlen = xcalloc((size_t)nargs + 3, sizeof *argvlen);
	struct rcmd *c;
	char nk[16];

	snprintf(nk, sizeof nk, "%d", nkeys);
	argv[0] = "EVALSHA";
	argvlen[0] = 7;
	if (rconn_script_table == NULL)
		fatalx("script_call: no scripts registered (rconn_scripts)");
	argv[1] = rconn_script_table[id].sha;
	argvlen[1] = 40;
	argv[2] = nk;
	argvlen[2] = strlen(nk);
	for (int i = 0; i < nargs; i++) {
		argv[3 + i] = args[i];
		argvlen[3 + i] = lens != NULL ? lens[i] : strlen(args[i]);
	}
	c = rcmd_new(rc, kind, cb, arg, nargs + 3, argv, argvlen);
	free(argv);
	free(argvlen);
	if (c == NULL) {
		if (cb != NULL)
			cb(NULL, arg);
		return;
	}
	c->script = (int)id;
	rconn_enqueue(rc, c);
}

/* Bytes of commands not yet answered. */
size_t
rconn_outbox_bytes(const struct rconn *rc)
{
	return rc->bytes;
}

/* Commands sent again after Redis refused them (BUSY & co.). */
unsigned long
rconn_retried(const struct rconn *rc)
{
	return rc->retried;
}
