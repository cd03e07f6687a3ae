/*
 * rconn.c: a Redis connection that comes back.
 *
 * Each connection reconnects with backoff (and says so), authenticates,
 * selects its database and, for sentinel:// URLs, asks the sentinels for
 * the master first, all without blocking the loop.  The command
 * connection has an outbox (rconnqueue.c): commands wait there while
 * Redis is away, and those that were in flight when it went away are
 * sent again, in order, once it is back.
 *
 * A connection dropped because of an error reply (here, or the fetch's
 * through rconn_drop) is no proof of a good server: its reconnect backoff
 * is reset only once a command on it succeeds, not when the handshake
 * does, so an error that lasts cannot make it reconnect ten times a
 * second.  The log lines of such errors are rate-limited (rconn_log, in
 * rconnqueue.c).
 */
#include <stdlib.h>
#include <string.h>

#include <hiredis/adapters/libev.h>

#include "rconn.h"

static void rconn_connect(struct rconn *rc);
static void rconn_schedule(struct rconn *rc, const char *why);

/* The address to connect to, from the URL or the sentinels' answer. */
static struct redis_url *
rconn_url(void)
{
	static struct redis_url u;
	static bool parsed;
	char err[ERR_MAX];

	if (!parsed) {
		if (url_parse(wk->conf->redis_url, &u, err, sizeof err) != 0)
			fatalx("redis url: %s", err);	/* config_check() ran already */
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
		rconn_flush(rc);
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
	if (rc->has_outbox)
		rc->handshake += rconn_load_scripts(rc, rconn_handshake_reply);
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

/* Times a connection was lost or refused. */
unsigned long
rconn_reconnects(const struct rconn *rc)
{
	return rc->reconnects;
}
