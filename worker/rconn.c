/*
 * rconn.c: a Redis connection that comes back.
 *
 * Each connection reconnects with backoff (and says so), authenticates,
 * selects its database and, for sentinel:// URLs, asks the sentinels for
 * the master first, all without blocking the loop.  The command
 * connection has an outbox: commands wait there while Redis is away, and
 * those that were in flight when it went away are sent again, in order,
 * once it is back.  Log batches may be dropped when the outbox is full;
 * results never are.
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
 * A connection dropped because of an error reply (here, or the fetch's
 * through rconn_drop) is no proof of a good server: its reconnect backoff
 * is reset only once a command on it succeeds, not when the handshake
 * does, so an error that lasts cannot make it reconnect ten times a
 * second.  The log lines of such errors are rate-limited (rconn_log).
 *
 * Invariant: every command sent is in `inflight` until hiredis calls its
 * callback, which hiredis does in order, with a NULL reply for each one
 * outstanding when the connection is freed.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/adapters/libev.h>

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

static void rconn_connect(struct rconn *rc);
static void rconn_schedule(struct rconn *rc, const char *why);
static void rconn_write(struct rconn *rc, struct rcmd *c);

#define RCONN_LOG_EVERY 10.0	/* seconds between two lines about the same error */

/*
 * Log a line about key (an error) at most once per RCONN_LOG_EVERY
 * seconds; the next line that gets out says how many were held back.
 * A few distinct keys are tracked per connection, the oldest replaced.
 */
static void __attribute__((format(printf, 4, 5)))
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
static void
rcmd_free(struct rcmd *c)
{
	c->rc->bytes -= c->len;
	free(c->buf);
	free(c);
}

/* The address to connect to, from the URL or the sentinels' answer. */
static struct redis_url *
rconn_url(void)
{
	static struct redis_url u;
	static bool parsed;
	char err[ERR_MAX];

	if (!parsed) {
		if (url_parse(wk->conf->redis_url, &u, err, sizeof err) != 0)
			fatal("redis url: %s", err);	/* config_check() ran already */
		parsed = true;
	}
	return &u;
}

/* The password: URL, then worker.ini, then the environment variable. */
static const char *
rconn_password(const char **user)
{
	struct redis_url *u = rconn_url();

	*user = u->user ? u->user : wk->conf->redis_user;
	if (u->password != NULL)
		return u->password;
	if (wk->conf->redis_password != NULL)
		return wk->conf->redis_password;
	if (wk->conf->redis_password_env != NULL)
		return getenv(wk->conf->redis_password_env);
	return NULL;
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
	struct rcmds todo;
	struct rcmd *c;

	rc->held = rc->hold_due = false;
	if (!rc->up || rc->ac == NULL)
		return;	/* the next connection sends them */
	if (rc->reload) {
		rc->reload = false;
		for (int i = 0; i < SCRIPT_COUNT; i++) {
			const char *argv[] = { "SCRIPT", "LOAD", script_body((enum script_id)i) };
			redisAsyncCommandArgv(rc->ac, rconn_load_reply, rc, 3, argv, NULL);
		}
	}
	/* Off the lists first: a write that fails puts its command back on replay. */
	TAILQ_INIT(&todo);
	TAILQ_FOREACH(c, &rc->replay, entry)
		rc->retried++;
	TAILQ_CONCAT(&todo, &rc->replay, entry);
	TAILQ_CONCAT(&todo, &rc->pending, entry);
	while ((c = TAILQ_FIRST(&todo)) != NULL) {
		TAILQ_REMOVE(&todo, c, entry);
		rconn_write(rc, c);
	}
}

/* The hold timer: resend now, or as soon as the last command in flight is answered. */
static void
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

/*
 * Drop the connection because of an error reply (the caller's own
 * command, in its callback): it comes back with a backoff that is not
 * reset until a command succeeds.  The line is rate-limited.
 */
void
rconn_drop(struct rconn *rc, const char *why)
{
	char key[16];

	snprintf(key, sizeof key, "%.*s", (int)strcspn(why, " "), why);
	rconn_log(rc, LOG_ERR, key, "redis %s: %s; reconnecting", rc->name, why);
	rc->error_drop = true;
	snprintf(rc->drop_why, sizeof rc->drop_why, "%s", why);
	if (rc->ac != NULL)
		redisAsyncDisconnect(rc->ac);
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

/* n in decimal at p; returns the end. */
static char *
rconn_utoa(char *p, size_t n)
{
	char tmp[24];
	size_t k = 0;

	do
		tmp[k++] = (char)('0' + n % 10);
	while ((n /= 10) > 0);
	while (k > 0)
		*p++ = tmp[--k];
	return p;
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
	p = rconn_utoa(p, (size_t)argc);
	*p++ = '\r';
	*p++ = '\n';
	for (int i = 0; i < argc; i++) {
		size_t n = argvlen ? argvlen[i] : strlen(argv[i]);
		*p++ = '$';
		p = rconn_utoa(p, n);
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
		fatal("out of memory formatting a Redis command");
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
	argv[1] = script_sha(id);
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

/* A handshake reply (AUTH, SELECT, ROLE, SCRIPT LOAD). */
static void
rconn_handshake_reply(redisAsyncContext *ac, void *reply, void *priv)
{
	struct rconn *rc = priv;
	redisReply *r = reply;

	if (r == NULL || rc->ac != ac)
		return;
	if (r->type == REDIS_REPLY_ERROR) {
		log_err("redis %s: %s", rc->name, r->str);
		rc->handshake = -1;
		redisAsyncDisconnect(ac);
		return;
	}
	if (r->type == REDIS_REPLY_ARRAY && r->elements > 0 && r->element[0]->type == REDIS_REPLY_STRING &&
	    strcmp(r->element[0]->str, "master") != 0 && strcmp(r->element[0]->str, "slave") == 0) {
		log_warn("redis %s: %s:%d is a replica now; asking the sentinels again", rc->name,
		    rc->master_host, rc->master_port);
		rc->handshake = -1;
		redisAsyncDisconnect(ac);
		return;
	}
	if (rc->handshake > 0 && --rc->handshake == 0) {
		ev_timer_stop(EV_DEFAULT, &rc->connect_timer);
		rc->up = true;
		/* A server that answered with an error may again: back off until a command succeeds. */
		if (!rc->error_drop)
			rc->backoff = 0;
		if (rc->ever_up)
			log_notice("redis %s: connected again", rc->name);
		else
			log_info("redis %s: connected", rc->name);
		rc->ever_up = true;
		/* TCP only: on a unix socket the TCP options fail and poison the context. */
		if (ac->c.connection_type == REDIS_CONN_TCP)
			redisEnableKeepAlive(&ac->c);	/* notice a dead peer on an idle link */
		/* Drain replayed and pending commands before anything new. */
		{
			struct rcmd *c;
			while ((c = TAILQ_FIRST(&rc->replay)) != NULL) {
				TAILQ_REMOVE(&rc->replay, c, entry);
				rconn_write(rc, c);
			}
			while ((c = TAILQ_FIRST(&rc->pending)) != NULL) {
				TAILQ_REMOVE(&rc->pending, c, entry);
				rconn_write(rc, c);
			}
		}
		if (rc->on_up != NULL)
			rc->on_up(rc);
	}
}

/* hiredis: the TCP connect finished (or failed). */
static void
rconn_connected(const redisAsyncContext *ac, int status)
{
	struct rconn *rc = ac->data;

	if (status != REDIS_OK) {
		/* hiredis frees the context after this returns. */
		rc->ac = NULL;
		ev_timer_stop(EV_DEFAULT, &rc->connect_timer);
		rconn_schedule(rc, ac->errstr);
	}
}

/* hiredis: the connection is gone; every pending callback already ran. */
static void
rconn_disconnected(const redisAsyncContext *ac, int status)
{
	struct rconn *rc = ac->data;
	bool was_up = rc->up;

	(void)status;
	rc->ac = NULL;
	rc->up = false;
	/* The refused commands are in replay: the next connection sends them first. */
	rc->held = rc->hold_due = rc->reload = false;
	ev_timer_stop(EV_DEFAULT, &rc->hold_timer);
	ev_timer_stop(EV_DEFAULT, &rc->connect_timer);
	if (rc->closing)
		return;
	if (was_up && rc->on_down != NULL)
		rc->on_down(rc);
	rconn_schedule(rc, rc->error_drop && rc->drop_why[0] ? rc->drop_why :
	    ac->errstr && *ac->errstr ? ac->errstr : "connection closed");
}

/* Connect to host:port (or the socket) and start the handshake. */
static void
rconn_open(struct rconn *rc, const char *host, int port, const char *path)
{
	struct redis_url *u = rconn_url();
	const char *user, *pass = rconn_password(&user);

	rc->ac = path ? redisAsyncConnectUnix(path) : redisAsyncConnect(host, port);
	if (rc->ac == NULL || rc->ac->err) {
		char why[128];
		snprintf(why, sizeof why, "%s", rc->ac ? rc->ac->errstr : "out of memory");
		if (rc->ac != NULL)
			redisAsyncFree(rc->ac);
		rc->ac = NULL;
		rconn_schedule(rc, why);
		return;
	}
	rc->ac->data = rc;
	redisLibevAttach(EV_DEFAULT, rc->ac);
	redisAsyncSetConnectCallback(rc->ac, rconn_connected);
	redisAsyncSetDisconnectCallback(rc->ac, rconn_disconnected);
	ev_timer_set(&rc->connect_timer, wk->conf->redis_connect_timeout, 0);
	ev_timer_start(EV_DEFAULT, &rc->connect_timer);

	/* Commands written before the connect completes are buffered by hiredis. */
	rc->handshake = 1;
	if (pass != NULL) {
		const char *argv[] = { "AUTH", user ? user : pass, pass };
		rc->handshake++;
		redisAsyncCommandArgv(rc->ac, rconn_handshake_reply, rc, user ? 3 : 2, argv, NULL);
	}
	if (u->db != 0) {
		char db[16];
		const char *argv[] = { "SELECT", db };
		snprintf(db, sizeof db, "%d", u->db);
		rc->handshake++;
		redisAsyncCommandArgv(rc->ac, rconn_handshake_reply, rc, 2, argv, NULL);
	}
	if (rc->has_outbox) {
		for (int i = 0; i < SCRIPT_COUNT; i++) {
			const char *argv[] = { "SCRIPT", "LOAD", script_body((enum script_id)i) };
			rc->handshake++;
			redisAsyncCommandArgv(rc->ac, rconn_handshake_reply, rc, 3, argv, NULL);
		}
	}
	/* ROLE last: a sentinel may have pointed us at a master that is no more. */
	{
		const char *argv[] = { "ROLE" };
		redisAsyncCommandArgv(rc->ac, rconn_handshake_reply, rc, 1, argv, NULL);
	}
}

/*
 * The sentinel's answer to AUTH.  Not fatal by itself: a sentinel without
 * requirepass refuses AUTH yet answers the query, and one that needs the
 * password answers the query NOAUTH, which moves on to the next sentinel.
 */
static void
rconn_sentinel_auth_reply(redisAsyncContext *ac, void *reply, void *priv)
{
	struct rconn *rc = priv;
	redisReply *r = reply;

	if (ac != rc->sac || r == NULL || r->type != REDIS_REPLY_ERROR)
		return;
	if (strstr(r->str, "without any password configured") != NULL)
		log_debug("redis %s: sentinel %zu has no password: %s", rc->name, rc->sentinel_next, r->str);
	else
		log_warn("redis %s: sentinel %zu refused AUTH: %s", rc->name, rc->sentinel_next, r->str);
}

/* The sentinel's answer: the master's address, or nothing. */
static void
rconn_sentinel_reply(redisAsyncContext *ac, void *reply, void *priv)
{
	struct rconn *rc = priv;
	redisReply *r = reply;

	/*
	 * A context that failed to connect is freed after its connect
	 * callback moved on to the next sentinel; its pending query then
	 * lands here with NULL, and must not disturb the new attempt.
	 */
	if (ac != rc->sac)
		return;
	rc->sac = NULL;
	ev_timer_stop(EV_DEFAULT, &rc->connect_timer);
	redisAsyncDisconnect(ac);
	if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements != 2) {
		log_warn("redis %s: sentinel %zu does not know the master (%s)", rc->name,
		    rc->sentinel_next, r && r->type == REDIS_REPLY_ERROR ? r->str : "no answer");
		if (rc->sentinel_next < rconn_url()->sentinels.n)
			rconn_connect(rc);
		else
			rconn_schedule(rc, "no sentinel knows the master");
		return;
	}
	free(rc->master_host);
	rc->master_host = xstrdup(r->element[0]->str);
	rc->master_port = atoi(r->element[1]->str);
	log_debug("redis %s: sentinels say the master is %s:%d", rc->name, rc->master_host,
	    rc->master_port);
	rc->sentinel_next = 0;
	rconn_open(rc, rc->master_host, rc->master_port, NULL);
}

/* A sentinel connection failed: try the next one. */
static void
rconn_sentinel_connected(const redisAsyncContext *ac, int status)
{
	struct rconn *rc = ac->data;

	if (status == REDIS_OK)
		return;
	rc->sac = NULL;
	ev_timer_stop(EV_DEFAULT, &rc->connect_timer);
	if (rc->sentinel_next < rconn_url()->sentinels.n)
		rconn_connect(rc);
	else
		rconn_schedule(rc, "no sentinel reachable");
}

/* Start connecting: straight to Redis, or through the next sentinel. */
static void
rconn_connect(struct rconn *rc)
{
	struct redis_url *u = rconn_url();

	if (u->kind == URL_TCP) {
		rconn_open(rc, u->host, u->port, NULL);
	} else if (u->kind == URL_UNIX) {
		rconn_open(rc, NULL, 0, u->path);
	} else {
		const char *argv[] = { "SENTINEL", "get-master-addr-by-name", u->master };
		char host[256];
		int port;

		if (url_sentinel(u, rc->sentinel_next++, host, sizeof host, &port) != 0) {
			rconn_schedule(rc, "bad sentinel address");
			return;
		}
		rc->sac = redisAsyncConnect(host, port);
		if (rc->sac == NULL || rc->sac->err) {
			if (rc->sac != NULL)
				redisAsyncFree(rc->sac);
			rc->sac = NULL;
			rconn_schedule(rc, "cannot reach a sentinel");
			return;
		}
		rc->sac->data = rc;
		redisLibevAttach(EV_DEFAULT, rc->sac);
		redisAsyncSetConnectCallback(rc->sac, rconn_sentinel_connected);
		/* The connect, AUTH and the query share one deadline. */
		ev_timer_stop(EV_DEFAULT, &rc->connect_timer);
		ev_timer_set(&rc->connect_timer, wk->conf->redis_connect_timeout, 0);
		ev_timer_start(EV_DEFAULT, &rc->connect_timer);
		if (u->password != NULL) {
			const char *auth[] = { "AUTH", u->user ? u->user : u->password, u->password };
			redisAsyncCommandArgv(rc->sac, rconn_sentinel_auth_reply, rc, u->user ? 3 : 2, auth, NULL);
		}
		redisAsyncCommandArgv(rc->sac, rconn_sentinel_reply, rc, 3, argv, NULL);
	}
}

/* Try again after the backoff: 0.1 s doubling to 5 s. */
static void
rconn_schedule(struct rconn *rc, const char *why)
{
	if (rc->closing)
		return;
	rc->backoff = rc->backoff == 0 ? 0.1 : rc->backoff * 2;
	if (rc->backoff > 5)
		rc->backoff = 5;
	rc->reconnects++;
	if (rconn_url()->kind == URL_SENTINEL && rc->sentinel_next >= rconn_url()->sentinels.n)
		rc->sentinel_next = 0;
	rconn_log(rc, LOG_WARN, why ? why : "error",
	    "redis %s: %s; retrying in %.1f s (%zu bytes of commands waiting)", rc->name,
	    why ? why : "error", rc->backoff, rc->bytes);
	ev_timer_stop(EV_DEFAULT, &rc->retry);
	ev_timer_set(&rc->retry, rc->backoff, 0);
	ev_timer_start(EV_DEFAULT, &rc->retry);
}

/* The backoff timer. */
static void
rconn_retry_cb(EV_P_ ev_timer *w, int revents)
{
	struct rconn *rc = w->data;

	(void)loop;
	(void)revents;
	if (rc->ac == NULL && rc->sac == NULL)
		rconn_connect(rc);
}

/* The connect took too long: give up on it and retry. */
static void
rconn_connect_timeout(EV_P_ ev_timer *w, int revents)
{
	struct rconn *rc = w->data;
	redisAsyncContext *ac = rc->ac;

	(void)loop;
	(void)revents;
	if (rc->sac != NULL) {
		/*
		 * A sentinel that does not connect or answer in time (a host
		 * that drops our SYN, a server that never replies): free it
		 * (its callbacks see a context that is no longer rc->sac) and
		 * ask the next one.
		 */
		redisAsyncContext *sac = rc->sac;
		rc->sac = NULL;
		redisAsyncFree(sac);
		log_warn("redis %s: sentinel %s did not answer within %g s", rc->name,
		    rconn_url()->sentinels.v[rc->sentinel_next - 1], wk->conf->redis_connect_timeout);
		if (rc->sentinel_next < rconn_url()->sentinels.n)
			rconn_connect(rc);
		else
			rconn_schedule(rc, "no sentinel answered");
		return;
	}
	if (ac == NULL || rc->up)
		return;
	/*
	 * Not inside a hiredis callback, so freeing is safe; a context that
	 * never connected gets no disconnect callback, so we schedule here.
	 */
	if (ac->c.flags & REDIS_CONNECTED) {
		redisAsyncDisconnect(ac);
		return;
	}
	rc->ac = NULL;
	redisAsyncFree(ac);
	rconn_schedule(rc, "connect timed out");
}

/* A new connection; call rconn_start() to connect. */
struct rconn *
rconn_new(const char *name, bool outbox, void (*on_up)(struct rconn *), void (*on_down)(struct rconn *))
{
	struct rconn *rc = xcalloc(1, sizeof *rc);

	rc->name = name;
	rc->has_outbox = outbox;
	rc->on_up = on_up;
	rc->on_down = on_down;
	TAILQ_INIT(&rc->pending);
	TAILQ_INIT(&rc->replay);
	TAILQ_INIT(&rc->inflight);
	ev_timer_init(&rc->retry, rconn_retry_cb, 0, 0);
	rc->retry.data = rc;
	ev_timer_init(&rc->connect_timer, rconn_connect_timeout, 0, 0);
	rc->connect_timer.data = rc;
	ev_timer_init(&rc->hold_timer, rconn_hold_cb, 0, 0);
	rc->hold_timer.data = rc;
	return rc;
}

/* Connect for the first time. */
void
rconn_start(struct rconn *rc)
{
	rconn_connect(rc);
}

/* Close for good (at exit). */
void
rconn_close(struct rconn *rc)
{
	struct rcmd *c;

	rc->closing = true;
	ev_timer_stop(EV_DEFAULT, &rc->retry);
	ev_timer_stop(EV_DEFAULT, &rc->hold_timer);
	ev_timer_stop(EV_DEFAULT, &rc->connect_timer);
	if (rc->sac != NULL)
		redisAsyncFree(rc->sac);
	if (rc->ac != NULL)
		redisAsyncFree(rc->ac);	/* runs the callbacks with NULL */
	rc->ac = rc->sac = NULL;
	while ((c = TAILQ_FIRST(&rc->replay)) != NULL) {
		TAILQ_REMOVE(&rc->replay, c, entry);
		rcmd_free(c);
	}
	while ((c = TAILQ_FIRST(&rc->pending)) != NULL) {
		TAILQ_REMOVE(&rc->pending, c, entry);
		rcmd_free(c);
	}
	free(rc->master_host);
	free(rc);
}

/* Whether the connection is usable now. */
bool
rconn_up(const struct rconn *rc)
{
	return rc->up;
}

/* The hiredis context (for the fetch's own commands). */
redisAsyncContext *
rconn_ctx(struct rconn *rc)
{
	return rc->ac;
}

/* Bytes of commands not yet answered. */
size_t
rconn_outbox_bytes(const struct rconn *rc)
{
	return rc->bytes;
}

/* Times a connection was lost or refused. */
unsigned long
rconn_reconnects(const struct rconn *rc)
{
	return rc->reconnects;
}

/* Commands sent again after Redis refused them (BUSY & co.). */
unsigned long
rconn_retried(const struct rconn *rc)
{
	return rc->retried;
}
