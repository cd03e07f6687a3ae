/*
 * fetch.c: taking jobs from the queue, and refusing the bad ones.
 *
 * The fetch connection carries nothing but BLMOVE queue -> our active
 * list, one at a time, and only while a slot is free.  Whenever that
 * connection is new (at start and after every reconnect) our active list
 * may hold a payload we never saw (a BLMOVE answered into a dead
 * connection, or a previous life with the same id): before the next
 * BLMOVE, the release script puts every payload we do not hold back on
 * the queue.  It never runs while a BLMOVE is in flight, so it cannot
 * take away a payload that is on its way to us.
 */
#include <stdlib.h>
#include <string.h>

#include "worker.h"

#define FETCH_BLOCK_SECONDS "30"

static bool fetch_inflight;
static bool fetch_recover_needed = true;
static bool fetch_recovering;

/* BLMOVE's answer: a payload, or nil after the block time. */
static void
fetch_reply(redisAsyncContext *ac, void *reply, void *priv)
{
	redisReply *r = reply;

	(void)ac;
	(void)priv;
	fetch_inflight = false;
	if (r == NULL)
		return;	/* the connection went; its up callback fetches again */
	if (r->type == REDIS_REPLY_STRING && !outdir_disk_ok(NULL)) {
		/* The disk filled while BLMOVE waited: the release puts it back for a worker with room. */
		log_warn("fetch: builds_root is below min_free; putting the job back");
		fetch_recover_later();
	} else if (r->type == REDIS_REPLY_STRING)
		job_fetched(r->str, r->len);
	else if (r->type == REDIS_REPLY_ERROR) {
		/*
		 * Not BLMOVE again at once, which would spin while the error
		 * lasts (READONLY, NOREPLICAS after a failover, OOM): drop the
		 * connection; it comes back with backoff, through the sentinels,
		 * and recovers before it fetches.
		 */
		log_err("fetch: %s; reconnecting", r->str);
		redisAsyncDisconnect(ac);
		return;
	}
	fetch_kick();
}

/* The release before fetching is done. */
static void
fetch_recovered(void)
{
	fetch_recovering = false;
	fetch_recover_needed = false;
	fetch_kick();
}

/* Put back, before the next fetch, what our active list holds and we do not. */
void
fetch_recover_later(void)
{
	fetch_recover_needed = true;
}

/* Ask for a job if a slot is free and nothing stands in the way. */
void
fetch_kick(void)
{
	char kact[KEY_MAX];
	const char *argv[6];

	if (wk->draining || wk->fetch == NULL || !rconn_up(wk->fetch) || !rconn_up(wk->cmd))
		return;
	if (fetch_inflight || fetch_recovering)
		return;
	if (fetch_recover_needed) {
		fetch_recovering = true;
		beat_release(false, fetch_recovered);
		return;
	}
	if (wk->held >= wk->slots || (wk->once && (wk->done > 0 || !TAILQ_EMPTY(&wk->jobs))))
		return;
	if (!outdir_disk_ok(NULL)) {
		outdir_disk_wait();	/* fetches again once there is room */
		return;
	}
	argv[0] = "BLMOVE";
	argv[1] = wk->keys.queue;
	argv[2] = keys_id(&wk->keys, "active", wk->id, kact, sizeof kact);
	argv[3] = "RIGHT";
	argv[4] = "LEFT";
	argv[5] = FETCH_BLOCK_SECONDS;
	if (redisAsyncCommandArgv(rconn_ctx(wk->fetch), fetch_reply, NULL, 6, argv, NULL) == REDIS_OK)
		fetch_inflight = true;
}

/* The fetch connection is (again) usable: recover, then fetch. */
static void
fetch_up(struct rconn *rc)
{
	(void)rc;
	fetch_recover_needed = true;
	fetch_kick();
}

/* The fetch connection went away. */
static void
fetch_down(struct rconn *rc)
{
	(void)rc;
	fetch_inflight = false;
	fetch_recover_needed = true;
}

/* Make and connect the fetch connection. */
void
fetch_init(void)
{
	wk->fetch = rconn_new("fetch", false, fetch_up, fetch_down);
	rconn_start(wk->fetch);
}

/* Take no more jobs: close the fetch connection (not from its callbacks). */
void
fetch_stop(void)
{
	if (wk->fetch == NULL)
		return;
	rconn_close(wk->fetch);
	wk->fetch = NULL;
	fetch_inflight = false;
}

/* The refuse script is done: the payload is in the dead list. */
static void
fetch_refused(redisReply *r, void *arg)
{
	struct job *j = arg;

	if (r == NULL)
		return;
	if (r->type == REDIS_REPLY_ERROR)
		log_err("job %s: dead-lettering failed: %s", j->id[0] ? j->id : "?", r->str);
	job_done_refused(j);
}

/* Dead-letter a payload: the original bytes, the reason and the message. */
void
fetch_refuse(struct job *j, enum refusal r, const char *msg)
{
	char now[32], maxlen[24], deadmax[24], kact[KEY_MAX], *prefix, clean[ERR_MAX];
	msgpack_sbuffer sb;
	msgpack_packer pk;
	const char *args[12];
	size_t lens[12];

	str_printable(clean, sizeof clean, msg);
	msg = clean;
	wk->m.refused++;
	log_warn("refused a job%s%s: %s: %s", j->id[0] ? " " : "", j->id, refusal_name(r), msg);
	job_set_state(j, JOB_REFUSING);
	snprintf(j->error, sizeof j->error, "%s", msg);

	msgpack_sbuffer_init(&sb);
	msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
	msgpack_pack_map(&pk, j->id[0] ? 6 : 5);
	mp_kv_str(&pk, "reason", refusal_name(r));
	mp_kv_str(&pk, "error", msg);
	mp_str(&pk, "payload");
	msgpack_pack_bin(&pk, j->payload_len);
	msgpack_pack_bin_body(&pk, j->payload, j->payload_len);
	mp_kv_str(&pk, "worker", wk->id);
	mp_kv_double(&pk, "ts", now_real());
	if (j->id[0])
		mp_kv_str(&pk, "id", j->id);

	snprintf(now, sizeof now, "%.6f", now_real());
	snprintf(maxlen, sizeof maxlen, "%ld", wk->conf->log_maxlen);
	snprintf(deadmax, sizeof deadmax, "%ld", wk->conf->dead_maxlen);
	args[0] = wk->keys.dead;
	args[1] = keys_id(&wk->keys, "active", wk->id, kact, sizeof kact);
	args[2] = j->payload;
	args[3] = sb.data;
	args[4] = j->id;
	args[5] = msg;
	args[6] = prefix = xasprintf("{%s}:", wk->keys.ns);
	args[7] = now;
	args[8] = maxlen;
	args[9] = refusal_name(r);
	args[10] = wk->id;
	args[11] = deadmax;
	for (int i = 0; i < 12; i++)
		lens[i] = (i == 2 || i == 3) ? 0 : strlen(args[i]);
	lens[2] = j->payload_len;
	lens[3] = sb.size;
	script_call(wk->cmd, SCRIPT_REFUSE, RQ_KEEP, fetch_refused, j, 2, 12, args, lens);
	free(prefix);
	msgpack_sbuffer_destroy(&sb);
}
