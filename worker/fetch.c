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

#include <hiredis/read.h>
#include <sha1.h>
#include <sha2.h>

#include "job.h"

#define FETCH_BLOCK_SECONDS "30"

static bool fetch_inflight;
static bool fetch_recover_needed = true;
static bool fetch_recovering;
static ev_timer fetch_again_timer;	/* a failed release is tried again later */
static void (*fetch_fetched)(const char *, size_t, const char *, const char *);

/*
 * hiredis 0.14.1 reads a whole bulk reply into its read buffer before it
 * makes the reply object, and then copies the bytes into it: a payload
 * costs twice its size.  The fetch connection's reader makes a string
 * over max_payload empty instead, keeping only what its refusal needs
 * (length, sha1, sha256), computed from hiredis's buffer in place, so
 * such a payload costs its size once, in hiredis's buffer, and no copy.
 * Only BLMOVE runs on this connection, one at a time: the one answer in
 * the making is the one fetch_reply() gets next.
 */
static redisReplyObjectFunctions fetch_fns;
static void *(*fetch_make_string)(const redisReadTask *, char *, size_t);
static struct {
	bool pending;
	size_t len;
	char sha1[41], sha256[65];
} fetch_big;

/* hiredis's createString on the fetch connection. */
static void *
fetch_create_string(const redisReadTask *task, char *str, size_t len)
{
	if (task->type != REDIS_REPLY_STRING || task->parent != NULL || len <= wk->conf->max_payload)
		return fetch_make_string(task, str, len);
	fetch_big.pending = true;
	fetch_big.len = len;
	SHA1Data((const uint8_t *)str, len, fetch_big.sha1);
	SHA256Data((const uint8_t *)str, len, fetch_big.sha256);
	return fetch_make_string(task, str, 0);
}

/* Make the fetch connection's reader use fetch_create_string(). */
static void
fetch_hook_reader(redisAsyncContext *ac)
{
	redisReader *rd = ac->c.reader;

	if (rd->fn == &fetch_fns)
		return;
	if (fetch_make_string == NULL) {
		fetch_fns = *rd->fn;
		fetch_make_string = fetch_fns.createString;
		fetch_fns.createString = fetch_create_string;
	}
	rd->fn = &fetch_fns;
}

/* BLMOVE's answer: a payload, or nil after the block time. */
static void
fetch_reply(redisAsyncContext *ac, void *reply, void *priv)
{
	redisReply *r = reply;

	(void)ac;
	(void)priv;
	fetch_inflight = false;
	if (r == NULL || wk->fetch == NULL || rconn_ctx(wk->fetch) != ac) {
		fetch_big.pending = false;
		return;	/* the connection went; its up callback fetches again */
	}
	if (r->type == REDIS_REPLY_ERROR) {
		/*
		 * Not BLMOVE again at once, which would spin while the error
		 * lasts (READONLY, NOREPLICAS after a failover, OOM, MISCONF):
		 * drop the connection; it comes back with a backoff that only a
		 * successful BLMOVE resets, through the sentinels, and recovers
		 * before it fetches.
		 */
		rconn_drop(wk->fetch, r->str);
		return;
	}
	rconn_ok(wk->fetch);
	if (r->type == REDIS_REPLY_STRING && fetch_big.pending) {
		fetch_big.pending = false;
		fetch_fetched(NULL, fetch_big.len, fetch_big.sha1, fetch_big.sha256);
	} else if (r->type == REDIS_REPLY_STRING && !outdir_disk_ok(NULL)) {
		/* The disk filled while BLMOVE waited: the release puts it back for a worker with room. */
		log_warn("fetch: builds_root is below min_free; putting the job back");
		fetch_recover_later();
	} else if (r->type == REDIS_REPLY_STRING)
		fetch_fetched(r->str, r->len, NULL, NULL);
	fetch_kick();
}

/* Time to try the release (and the fetch) again. */
static void
fetch_again_cb(EV_P_ ev_timer *w, int revents)
{
	(void)loop;
	(void)w;
	(void)revents;
	fetch_kick();
}

/*
 * The release before fetching is done.  Only a release Redis carried
 * out clears the need; one it answered with an error (the outbox retries
 * BUSY & co. itself, so this is a lasting one) is tried again in a few
 * seconds, and nothing is fetched meanwhile.
 */
static void
fetch_recovered(bool ok)
{
	fetch_recovering = false;
	if (!ok) {
		ev_timer_stop(EV_DEFAULT, &fetch_again_timer);
		ev_timer_set(&fetch_again_timer, 5, 0);
		ev_timer_start(EV_DEFAULT, &fetch_again_timer);
		return;
	}
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
	if (fetch_inflight || fetch_recovering || ev_is_active(&fetch_again_timer))
		return;
	if (fetch_recover_needed) {
		fetch_recovering = true;
		beat_release(false, fetch_recovered);
		return;
	}
	if (wk->held >= wk->slots || (wk->once && (wk->done > 0 || !TAILQ_EMPTY(&wk->jobs))))
		return;
	if (!outdir_disk_ok(NULL)) {
		outdir_disk_wait(fetch_kick);	/* fetches again once there is room */
		return;
	}
	argv[0] = "BLMOVE";
	argv[1] = wk->keys.queue;
	argv[2] = keys_id(&wk->keys, "active", wk->id, kact, sizeof kact);
	argv[3] = "RIGHT";
	argv[4] = "LEFT";
	argv[5] = FETCH_BLOCK_SECONDS;
	fetch_hook_reader(rconn_ctx(wk->fetch));
	fetch_big.pending = false;
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

/* Make and connect the fetch connection; fetched gets each payload. */
void
fetch_init(void (*fetched)(const char *payload, size_t len, const char *sha1, const char *sha256))
{
	fetch_fetched = fetched;
	ev_timer_init(&fetch_again_timer, fetch_again_cb, 0, 0);
	wk->fetch = rconn_new("fetch", false, fetch_up, fetch_down);
	rconn_start(wk->fetch);
}

/* Take no more jobs: close the fetch connection (not from its callbacks). */
void
fetch_stop(void)
{
	if (wk->fetch == NULL)
		return;
	ev_timer_stop(EV_DEFAULT, &fetch_again_timer);
	rconn_close(wk->fetch);
	wk->fetch = NULL;
	fetch_inflight = false;
}

/* What a refusal waits for: its job, and whom to tell when Redis answered. */
struct fetch_refusal {
	struct job *job;
	void (*done)(struct job *);
};

/* The refuse script is done: the payload is in the dead list. */
static void
fetch_refused(redisReply *r, void *arg)
{
	struct fetch_refusal *fr = arg;
	struct job *j = fr->job;
	void (*done)(struct job *) = fr->done;

	free(fr);
	if (r == NULL)
		return;	/* only at exit */
	if (r->type == REDIS_REPLY_ERROR)
		log_err("job %s: dead-lettering failed: %s", j->id[0] ? j->id : "?", r->str);
	else if (r->type == REDIS_REPLY_INTEGER && r->integer == 0)
		log_info("job %s: the refused payload had left our active list already", j->id[0] ? j->id : "?");
	done(j);
}

/*
 * Dead-letter a payload: the reason and the message.  The script finds
 * the payload in our active list by length and sha1 and builds the entry
 * itself, so the bytes are not sent back (a payload just under Redis's
 * bulk limit could not be, twice over), and the worker's copy goes now.
 */
void
fetch_refuse(struct job *j, enum refusal r, const char *msg, void (*done)(struct job *))
{
	struct fetch_refusal *fr = xmalloc(sizeof *fr);
	char clean[ERR_MAX];

	fr->job = j;
	fr->done = done;
	str_printable(clean, sizeof clean, msg);
	msg = clean;
	wk->m.refused++;
	log_warn("refused a job%s%s: %s: %s", j->id[0] ? " " : "", j->id, refusal_name(r), msg);
	snprintf(j->error, sizeof j->error, "%s", msg);
	free(j->payload);
	j->payload = NULL;

	script_refuse(&(struct script_refuse) {
	    .id = j->id, .payload_len = j->payload_len, .sha1 = j->payload_sha1,
	    .sha256 = r == REFUSE_TOO_LARGE ? j->payload_sha256 : NULL, .error = msg,
	    .reason = refusal_name(r), .now = now_real(),
	}, fetch_refused, fr);
}
