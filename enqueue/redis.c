/*
 * redis.c: reaching Redis from the command line, blocking.
 *
 * redis:// and unix:// connect straight; sentinel:// asks each sentinel
 * in turn for the master and checks with ROLE that it still is one.
 * Then AUTH (URL password, else worker.ini, else the environment
 * variable password_env names) and SELECT.  Any failure here or in a
 * later command exits 8 with a message naming the server.
 */
#include <errno.h>
#include <math.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>

#include "enqueue.h"

/* A timeval from seconds. */
static struct timeval
redis_tv(double secs)
{
	struct timeval tv;

	if (secs <= 0)
		secs = 5;
	tv.tv_sec = (time_t)secs;
	tv.tv_usec = (suseconds_t)((secs - floor(secs)) * 1e6);
	return tv;
}

/* Connect to host:port (or a unix socket when path is set). */
static redisContext *
redis_open(const char *host, int port, const char *path, double timeout, char *err, size_t errlen)
{
	redisContext *ctx;

	if (path != NULL)
		ctx = redisConnectUnixWithTimeout(path, redis_tv(timeout));
	else
		ctx = redisConnectWithTimeout(host, port, redis_tv(timeout));
	if (ctx == NULL) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	if (ctx->err) {
		snprintf(err, errlen, "%s", ctx->errstr);
		redisFree(ctx);
		return NULL;
	}
	/* Answers get the connect timeout plus room for a 1 s blocking pop. */
	redisSetTimeout(ctx, redis_tv((timeout > 0 ? timeout : 5) + 5));
	return ctx;
}

/* Run one command at connection time; the reply or NULL with err. */
static redisReply *
redis_hello(redisContext *ctx, int argc, const char **argv, char *err, size_t errlen)
{
	redisReply *r = redisCommandArgv(ctx, argc, argv, NULL);

	if (r == NULL) {
		snprintf(err, errlen, "%s", ctx->errstr[0] ? ctx->errstr : "no answer");
		return NULL;
	}
	if (r->type == REDIS_REPLY_ERROR) {
		if (strcmp(argv[0], "AUTH") == 0)
			snprintf(err, errlen, "authentication failed: %s", r->str);
		else
			snprintf(err, errlen, "%s: %s", argv[0], r->str);
		freeReplyObject(r);
		return NULL;
	}
	return r;
}

/* AUTH and SELECT on a fresh connection. */
static int
redis_login(redisContext *ctx, const struct config *c, const struct redis_url *u, char *err,
    size_t errlen)
{
	const char *user = u->user ? u->user : c->redis_user, *pass = u->password;
	redisReply *r;
	char db[16];

	if (pass == NULL)
		pass = c->redis_password;
	if (pass == NULL && c->redis_password_env != NULL)
		pass = getenv(c->redis_password_env);
	if (pass != NULL && *pass != '\0') {
		const char *argv[] = { "AUTH", user ? user : pass, pass };
		if ((r = redis_hello(ctx, user ? 3 : 2, argv, err, errlen)) == NULL)
			return -1;
		freeReplyObject(r);
	}
	if (u->db != 0) {
		const char *argv[] = { "SELECT", db };
		snprintf(db, sizeof db, "%d", u->db);
		if ((r = redis_hello(ctx, 2, argv, err, errlen)) == NULL)
			return -1;
		freeReplyObject(r);
	}
	return 0;
}

/* Whether ROLE says this server is a master. */
static bool
redis_is_master(redisContext *ctx, char *err, size_t errlen)
{
	const char *argv[] = { "ROLE" };
	redisReply *r = redis_hello(ctx, 1, argv, err, errlen);
	bool ok;

	if (r == NULL)
		return false;
	ok = r->type == REDIS_REPLY_ARRAY && r->elements > 0 &&
	    r->element[0]->type == REDIS_REPLY_STRING && strcmp(r->element[0]->str, "master") == 0;
	if (!ok)
		snprintf(err, errlen, "ROLE does not say master");
	freeReplyObject(r);
	return ok;
}

/* Ask the sentinels for the master, connect and check it. */
static redisContext *
redis_sentinel(const struct config *c, const struct redis_url *u, char *err, size_t errlen)
{
	char host[256], e[ERR_MAX];

	snprintf(err, errlen, "no sentinel listed");
	for (size_t i = 0; i < u->sentinels.n; i++) {
		const char *argv[] = { "SENTINEL", "get-master-addr-by-name", u->master };
		const char *sen = u->sentinels.v[i];
		redisContext *s, *m;
		redisReply *r;
		long long port;
		int sport;

		if (url_sentinel(u, i, host, sizeof host, &sport) != 0) {
			snprintf(err, errlen, "bad sentinel address \"%s\"", sen);
			continue;
		}
		if ((s = redis_open(host, sport, NULL, c->redis_connect_timeout, e, sizeof e)) == NULL) {
			snprintf(err, errlen, "sentinel %s: %s", sen, e);
			continue;
		}
		if (u->password != NULL) {
			/*
			 * The URL's credentials open the sentinels too.  A refusal is
			 * not final: a sentinel without requirepass refuses AUTH yet
			 * answers, one that needs it answers NOAUTH below.
			 */
			const char *auth[] = { "AUTH", u->user ? u->user : u->password, u->password };
			if ((r = redis_hello(s, u->user ? 3 : 2, auth, e, sizeof e)) != NULL)
				freeReplyObject(r);
		}
		r = redis_hello(s, 3, argv, e, sizeof e);
		redisFree(s);
		if (r == NULL) {
			snprintf(err, errlen, "sentinel %s: %s", sen, e);
			continue;
		}
		if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
		    r->element[0]->type != REDIS_REPLY_STRING || r->element[1]->type != REDIS_REPLY_STRING ||
		    parse_int(r->element[1]->str, 1, 65535, &port, e, sizeof e) != 0) {
			snprintf(err, errlen, "sentinel %s does not know master \"%s\"", sen, u->master);
			freeReplyObject(r);
			continue;
		}
		snprintf(host, sizeof host, "%s", r->element[0]->str);
		freeReplyObject(r);
		if ((m = redis_open(host, (int)port, NULL, c->redis_connect_timeout, e, sizeof e)) != NULL) {
			if (redis_login(m, c, u, e, sizeof e) == 0 && redis_is_master(m, e, sizeof e))
				return m;
			redisFree(m);
		}
		snprintf(err, errlen, "master %s:%lld (from sentinel %s): %s", host, port, sen, e);
	}
	return NULL;
}

/* Connect per the config's URL; exits 8 when that fails. */
redisContext *
redis_connect(const struct config *c)
{
	struct redis_url u;
	redisContext *ctx = NULL;
	char err[ERR_MAX], *shown;

	if (url_parse(c->redis_url, &u, err, sizeof err) != 0)
		enq_die(EXIT_USAGE, "redis url: %s", err);	/* config_check() ran */
	if (u.kind == URL_SENTINEL)
		ctx = redis_sentinel(c, &u, err, sizeof err);
	else {
		ctx = redis_open(u.host, u.port, u.kind == URL_UNIX ? u.path : NULL,
		    c->redis_connect_timeout, err, sizeof err);
		if (ctx != NULL && redis_login(ctx, c, &u, err, sizeof err) != 0) {
			redisFree(ctx);
			ctx = NULL;
		}
	}
	if (ctx == NULL) {
		shown = url_display(&u);
		url_free(&u);
		fflush(stdout);
		fprintf(stderr, "enqueue: cannot use Redis at %s: %s\n", shown, err);
		free(shown);
		exit(EXIT_REDIS);
	}
	url_free(&u);
	return ctx;
}

/* Close and forget a connection. */
void
redis_close(redisContext **ctx)
{
	if (*ctx != NULL)
		redisFree(*ctx);
	*ctx = NULL;
}

/* Die for a connection that failed under a command. */
static void __attribute__((noreturn))
redis_lost(redisContext *ctx, const char *cmd)
{
	enq_die(EXIT_REDIS, "redis: %s: %s", cmd, ctx->errstr[0] ? ctx->errstr : "connection lost");
}

/* Run a command; an error reply is the caller's to judge. */
static redisReply *
redis_try(redisContext *ctx, int argc, const char **argv, const size_t *lens)
{
	redisReply *r = redisCommandArgv(ctx, argc, argv, lens);

	if (r == NULL)
		redis_lost(ctx, argv[0]);
	return r;
}

/* Run a command; an error reply exits 8. */
redisReply *
redis_command(redisContext *ctx, int argc, const char **argv, const size_t *lens)
{
	redisReply *r = redis_try(ctx, argc, argv, lens);

	if (r->type == REDIS_REPLY_ERROR) {
		char msg[ERR_MAX];

		/* The reply is freed before exiting: nothing is left for a leak checker. */
		snprintf(msg, sizeof msg, "%s", r->str);
		freeReplyObject(r);
		if (strncmp(msg, "NOAUTH", 6) == 0)
			enq_die(EXIT_REDIS, "redis: %s (set [redis] password, the variable password_env "
			    "names, or a password in the URL)", msg);
		enq_die(EXIT_REDIS, "redis: %s: %s", argv[0], msg);
	}
	return r;
}

/* Run a command given as C strings up to a NULL (see redis_commandv). */
redisReply *
redis_command_list(redisContext *ctx, const char **argv)
{
	int argc = 0;

	while (argv[argc] != NULL)
		argc++;
	return redis_command(ctx, argc, argv, NULL);
}

/* Wait up to ms for a reply that Redis pushes (a pub/sub message). */
int
redis_poll(redisContext *ctx, int ms, redisReply **out)
{
	struct pollfd pfd = { .fd = ctx->fd, .events = POLLIN };
	void *r = NULL;

	*out = NULL;
	if (redisGetReplyFromReader(ctx, &r) != REDIS_OK)
		redis_lost(ctx, "SUBSCRIBE");
	if (r == NULL) {
		int n = poll(&pfd, 1, ms);
		if (n < 0 && errno != EINTR)
			enq_die(EXIT_REDIS, "poll: %s", strerror(errno));
		if (n <= 0)
			return 0;
		if (redisBufferRead(ctx) != REDIS_OK || redisGetReplyFromReader(ctx, &r) != REDIS_OK)
			redis_lost(ctx, "SUBSCRIBE");
	}
	*out = r;
	return r != NULL;
}

/* Subscribe to one channel; the confirmation is read here. */
void
redis_subscribe(redisContext *ctx, const char *channel)
{
	redisReply *r = redis_commandv(ctx, "SUBSCRIBE", channel);

	if (r->type != REDIS_REPLY_ARRAY || r->elements < 1 ||
	    r->element[0]->type != REDIS_REPLY_STRING || strcmp(r->element[0]->str, "subscribe") != 0)
		enq_die(EXIT_REDIS, "redis: SUBSCRIBE %s: unexpected answer", channel);
	freeReplyObject(r);
}

/* The integer answer of a one-key command. */
long long
redis_count(redisContext *ctx, const char *cmd, const char *key)
{
	redisReply *r = redis_commandv(ctx, cmd, key);
	long long n = r->type == REDIS_REPLY_INTEGER ? r->integer : 0;

	freeReplyObject(r);
	return n;
}

/* The value of field in an HGETALL reply (a flat array), or NULL. */
const char *
redis_field(const redisReply *r, const char *field)
{
	if (r == NULL || r->type != REDIS_REPLY_ARRAY)
		return NULL;
	for (size_t i = 0; i + 1 < r->elements; i += 2) {
		if (r->element[i]->type == REDIS_REPLY_STRING && strcmp(r->element[i]->str, field) == 0 &&
		    r->element[i + 1]->type == REDIS_REPLY_STRING)
			return r->element[i + 1]->str;
	}
	return NULL;
}

/*
 * Look through list key for the payload whose id is id, 1000 entries at
 * a time (at most 100000): its index, with the decoded payload in out
 * (which the caller destroys either way), or -1.
 */
long
redis_find_payload(redisContext *ctx, const char *key, const char *id, msgpack_unpacked *out)
{
	char from[24], to[24], want[ID_MAX + 1];

	msgpack_unpacked_init(out);
	for (long start = 0; start < 100000; start += 1000) {
		redisReply *r;
		snprintf(from, sizeof from, "%ld", start);
		snprintf(to, sizeof to, "%ld", start + 999);
		r = redis_commandv(ctx, "LRANGE", key, from, to);
		for (size_t i = 0; i < r->elements; i++) {
			const redisReply *e = r->element[i];
			if (e->type != REDIS_REPLY_STRING || !print_unpack(e->str, e->len, out))
				continue;
			if (mp_get_str(&out->data, "id", want, sizeof want) && strcmp(want, id) == 0) {
				freeReplyObject(r);
				return start + (long)i;
			}
		}
		if (r->elements < 1000) {
			freeReplyObject(r);
			break;
		}
		freeReplyObject(r);
	}
	msgpack_unpacked_destroy(out);
	msgpack_unpacked_init(out);
	return -1;
}
