/*
 * scripts.c: the Lua scripts that change a job's state.
 *
 * Each state change that must be atomic is one script, so that a lease
 * check and the write it guards cannot be separated by another client:
 * claim (take the lease), emit (send an event while holding it), finish
 * (record the one result), refuse (dead-letter a payload), beat
 * (heartbeat, reaper, delayed retries, orphans) and release (put held
 * payloads back on the queue).  Their text lives in worker/lua/ (each
 * file's header lists its KEYS and ARGV); the build turns prelude.lua +
 * each file into a C string in $(B)/gen/worker_lua.h.  PROTOCOL.md
 * describes them in words.
 *
 * Keys a script derives from the "{ns}:" prefix share the hash tag of the
 * keys it is given, so a Redis Cluster serves them from the same slot.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sha1.h>

#include "worker.h"
#include "worker_lua.h"

static const char *script_bodies[SCRIPT_COUNT] = {
	[SCRIPT_CLAIM] = lua_claim, [SCRIPT_EMIT] = lua_emit,
	[SCRIPT_FINISH] = lua_finish, [SCRIPT_REFUSE] = lua_refuse,
	[SCRIPT_BEAT] = lua_beat, [SCRIPT_RELEASE] = lua_release,
};

/* Every script's text and SHA1 (computed on the first call); see worker.h. */
const struct rconn_script *
script_table(void)
{
	static char shas[SCRIPT_COUNT][41];
	static struct rconn_script table[SCRIPT_COUNT];

	if (table[0].body == NULL) {
		for (int i = 0; i < SCRIPT_COUNT; i++) {
			SHA1Data((const uint8_t *)script_bodies[i], strlen(script_bodies[i]), shas[i]);
			table[i].body = script_bodies[i];
			table[i].sha = shas[i];
		}
	}
	return table;
}

/*
 * The arguments of one call, KEYS first, each with its length: the
 * builder tracks both, so no caller counts positions or fixes lengths.
 * Numbers and derived keys are formatted into the builder itself; past
 * SARGS_FIXED arguments (the release's held payloads) it grows on the
 * heap.  The order of the sargs_* calls in each script_* function below
 * is the order its worker/lua/ file's header documents.
 */
#define SARGS_FIXED 32
#define SARGS_KEYS 6

struct sargs {
	int nkeys;		/* how many of the first arguments are KEYS */
	size_t n, cap;
	const char **v;
	size_t *len;
	const char *fixed_v[SARGS_FIXED];
	size_t fixed_len[SARGS_FIXED];
	char num[SARGS_FIXED][32];	/* numbers, formatted in place */
	size_t nnum;
	char key[SARGS_KEYS][KEY_MAX];	/* "{ns}:kind:id" keys */
	size_t nkey;
};

/* An empty argument list. */
static void
sargs_init(struct sargs *a)
{
	a->nkeys = 0;
	a->n = a->nnum = a->nkey = 0;
	a->cap = SARGS_FIXED;
	a->v = a->fixed_v;
	a->len = a->fixed_len;
}

/* Append len bytes at p (borrowed until the call is sent). */
static void
sargs_bin(struct sargs *a, const char *p, size_t len)
{
	if (a->n == a->cap) {
		size_t cap = a->cap * 2;
		const char **v = xcalloc(cap, sizeof *v);
		size_t *l = xcalloc(cap, sizeof *l);
		memcpy(v, a->v, a->n * sizeof *v);
		memcpy(l, a->len, a->n * sizeof *l);
		if (a->v != a->fixed_v) {
			free(a->v);
			free(a->len);
		}
		a->v = v;
		a->len = l;
		a->cap = cap;
	}
	a->v[a->n] = p != NULL ? p : "";
	a->len[a->n] = p != NULL ? len : 0;
	a->n++;
}

/* Append a string. */
static void
sargs_str(struct sargs *a, const char *s)
{
	sargs_bin(a, s, strlen(s));
}

/* Append a number (or any short text) formatted with fmt. */
static void __attribute__((format(printf, 2, 3)))
sargs_fmt(struct sargs *a, const char *fmt, ...)
{
	va_list ap;
	char *b;

	if (a->nnum == SARGS_FIXED)
		fatalx("sargs: more than %d formatted arguments", SARGS_FIXED);
	b = a->num[a->nnum++];
	va_start(ap, fmt);
	vsnprintf(b, sizeof a->num[0], fmt, ap);
	va_end(ap);
	sargs_str(a, b);
}

/* Append an integer. */
static void
sargs_int(struct sargs *a, long long v)
{
	sargs_fmt(a, "%lld", v);
}

/* Append a key given whole (one of struct keys); keys come before any ARGV. */
static void
sargs_key(struct sargs *a, const char *key)
{
	if ((size_t)a->nkeys != a->n)
		fatalx("sargs: a key after an argument");
	sargs_str(a, key);
	a->nkeys++;
}

/* Append the key "{ns}:kind:id". */
static void
sargs_key_id(struct sargs *a, const char *kind, const char *id)
{
	if (a->nkey == SARGS_KEYS)
		fatalx("sargs: more than %d derived keys", SARGS_KEYS);
	sargs_key(a, keys_id(&wk->keys, kind, id, a->key[a->nkey], KEY_MAX));
	a->nkey++;
}

/* Send the call on the command connection and let go of the list. */
static void
sargs_send(struct sargs *a, enum script_id id, enum rq_kind kind, rq_cb *cb, void *arg)
{
	script_call(wk->cmd, id, kind, cb, arg, a->nkeys, (int)a->n, a->v, a->len);
	if (a->v != a->fixed_v) {
		free(a->v);
		free(a->len);
	}
	sargs_init(a);
}

/* claim.lua: take the lease and send `started` (see its header). */
void
script_claim(const struct script_claim *c, rq_cb *cb, void *arg)
{
	struct sargs a;

	sargs_init(&a);
	sargs_key_id(&a, "job", c->id);
	sargs_key_id(&a, "active", wk->id);
	sargs_key(&a, wk->keys.cancel);
	sargs_key_id(&a, "log", c->id);
	sargs_key_id(&a, "progress", c->id);
	sargs_key(&a, wk->keys.events);
	sargs_str(&a, wk->id);
	sargs_bin(&a, c->payload, c->payload_len);
	sargs_fmt(&a, "%.6f", c->now);
	sargs_str(&a, c->id);
	sargs_bin(&a, c->started, c->started_len);
	sargs_fmt(&a, "%zu", c->seq_off);
	sargs_fmt(&a, "%zu", c->att_off);
	sargs_int(&a, wk->conf->log_maxlen);
	sargs_int(&a, wk->conf->dead_maxlen);
	sargs_send(&a, SCRIPT_CLAIM, RQ_KEEP, cb, arg);
}

/* emit.lua: one event under our lease (see its header). */
void
script_emit(const struct script_emit *e, enum rq_kind kind, rq_cb *cb, void *arg)
{
	struct sargs a;

	sargs_init(&a);
	sargs_key_id(&a, "job", e->id);
	sargs_key_id(&a, "progress", e->id);
	sargs_key(&a, wk->keys.events);
	sargs_key_id(&a, "log", e->id);
	sargs_key(&a, wk->keys.cancel);
	sargs_str(&a, wk->id);
	sargs_int(&a, e->attempt);
	sargs_bin(&a, e->event, e->event_len);
	sargs_fmt(&a, "%llu", (unsigned long long)e->seq);
	sargs_str(&a, e->type);
	sargs_int(&a, wk->conf->log_maxlen);
	sargs_str(&a, e->to_events ? "1" : "0");
	sargs_str(&a, e->phase != NULL ? e->phase : "");
	sargs_str(&a, e->id);
	sargs_send(&a, SCRIPT_EMIT, kind, cb, arg);
}

/* finish.lua: the one result, or the retry (see its header). */
void
script_finish(const struct script_finish *f, rq_cb *cb, void *arg)
{
	struct sargs a;

	sargs_init(&a);
	sargs_key_id(&a, "job", f->id);
	sargs_key_id(&a, "active", wk->id);
	sargs_key(&a, wk->keys.results);
	sargs_key_id(&a, "result", f->id);
	sargs_key_id(&a, "progress", f->id);
	sargs_key(&a, wk->keys.events);
	sargs_key_id(&a, "log", f->id);
	sargs_key(&a, wk->keys.cancel);
	sargs_key(&a, wk->keys.delayed);
	sargs_str(&a, wk->id);
	sargs_int(&a, f->attempt);
	sargs_bin(&a, f->payload, f->payload_len);
	sargs_bin(&a, f->result, f->result_len);
	sargs_bin(&a, f->finished, f->finished_len);
	sargs_fmt(&a, "%llu", (unsigned long long)f->seq);
	sargs_str(&a, f->status);
	sargs_int(&a, f->exit_code);
	sargs_fmt(&a, "%.6f", f->finished_at);
	sargs_str(&a, f->error);
	sargs_int(&a, wk->conf->result_ttl);
	sargs_int(&a, wk->conf->log_maxlen);
	sargs_str(&a, f->id);
	if (f->retry_due > 0)
		sargs_fmt(&a, "%.3f", f->retry_due);
	else
		sargs_str(&a, "0");
	sargs_bin(&a, f->requeued, f->requeued_len);
	sargs_send(&a, SCRIPT_FINISH, RQ_KEEP, cb, arg);
}

/* refuse.lua: dead-letter a payload found in our active list (see its header). */
void
script_refuse(const struct script_refuse *r, rq_cb *cb, void *arg)
{
	struct sargs a;

	sargs_init(&a);
	sargs_key(&a, wk->keys.dead);
	sargs_key_id(&a, "active", wk->id);
	sargs_fmt(&a, "%zu", r->payload_len);
	sargs_str(&a, r->sha1);
	sargs_str(&a, r->id);
	sargs_str(&a, r->error);
	sargs_str(&a, wk->keys.prefix);
	sargs_fmt(&a, "%.6f", r->now);
	sargs_int(&a, wk->conf->log_maxlen);
	sargs_str(&a, r->reason);
	sargs_str(&a, wk->id);
	sargs_int(&a, wk->conf->dead_maxlen);
	sargs_str(&a, r->sha256 != NULL ? r->sha256 : "");
	sargs_send(&a, SCRIPT_REFUSE, RQ_KEEP, cb, arg);
}

/* beat.lua: heartbeat, reaper, delayed retries, orphans (see its header). */
void
script_beat(const struct script_beat *b, rq_cb *cb, void *arg)
{
	const struct config *c = wk->conf;
	struct sargs a;

	sargs_init(&a);
	sargs_key_id(&a, "worker", wk->id);
	sargs_key(&a, wk->keys.workers);
	sargs_key(&a, wk->keys.reaper_lock);
	sargs_key(&a, wk->keys.delayed);
	sargs_key(&a, wk->keys.queue);
	sargs_key(&a, wk->keys.dead);
	sargs_key_id(&a, "orphans", wk->host);
	sargs_str(&a, wk->id);
	sargs_fmt(&a, "%.3f", b->now);
	sargs_int(&a, b->ttl_ms);
	sargs_int(&a, (long)(c->reaper_interval * 1000));
	sargs_str(&a, wk->keys.prefix);
	sargs_int(&a, c->max_attempts);
	sargs_str(&a, wk->host);
	sargs_int(&a, (int)getpid());
	sargs_str(&a, DEBATE_VERSION);
	sargs_fmt(&a, "%.3f", wk->started_at);
	sargs_int(&a, wk->slots);
	sargs_fmt(&a, "%zu", b->nrun);
	sargs_str(&a, b->jobs);
	sargs_int(&a, c->log_maxlen);
	sargs_fmt(&a, "%.3f", c->heartbeat_ttl);
	sargs_int(&a, c->dead_maxlen);
	sargs_str(&a, b->mode);
	sargs_fmt(&a, "%llu", (unsigned long long)b->free_bytes);
	sargs_str(&a, b->disk_ok ? "0" : "1");
	sargs_send(&a, SCRIPT_BEAT, RQ_ONCE, cb, arg);
}

/* release.lua: put back what we do not hold (see its header). */
void
script_release(const struct script_release *r, rq_cb *cb, void *arg)
{
	struct sargs a;

	sargs_init(&a);
	sargs_key_id(&a, "active", wk->id);
	sargs_key(&a, wk->keys.queue);
	sargs_key_id(&a, "worker", wk->id);
	sargs_key(&a, wk->keys.workers);
	sargs_str(&a, wk->keys.prefix);
	sargs_fmt(&a, "%.3f", r->now);
	sargs_int(&a, wk->conf->log_maxlen);
	sargs_str(&a, r->all ? "drained" : "recovered");
	sargs_str(&a, r->all ? "1" : "0");
	for (size_t i = 0; i < r->nheld; i++)
		sargs_str(&a, r->held[i]);
	sargs_send(&a, SCRIPT_RELEASE, RQ_KEEP, cb, arg);
}
