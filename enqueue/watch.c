/*
 * watch.c: following events as they happen: `enqueue watch`, and
 * `enqueue submit --follow`.
 *
 * submit --follow subscribes to the job's progress channel first and only
 * then replays the stored stream, so no event falls between the two; the
 * printer skips any seq it has printed.  It ends with the finished event,
 * or when the job hash says the job reached a final state without one
 * (dead, or a stream that expired).  watch does the same without the
 * replay, or, with no id, prints every job's lifecycle events until
 * Ctrl-C.
 */
#include <stdlib.h>
#include <string.h>

#include "enqueue.h"

#define WATCH_POLL_MS 250
#define WATCH_CHECK_SECS 1.0

enum { O_TIMEOUT = 1 };

/* Whether a job hash state is final. */
static bool
watch_final(const char *state)
{
	enum status s;

	return state != NULL && status_parse(state, &s) == 0 && s != ST_QUEUED && s != ST_RUNNING;
}

/* Print a pushed pub/sub message through p. */
static void
watch_message(struct printer *p, const redisReply *r)
{
	if (r->type != REDIS_REPLY_ARRAY || r->elements != 3 || r->element[0]->type != REDIS_REPLY_STRING ||
	    strcmp(r->element[0]->str, "message") != 0 || r->element[2]->type != REDIS_REPLY_STRING)
		return;
	print_event_raw(p, r->element[2]->str, r->element[2]->len);
}

/*
 * Look at the job hash: when it is final but we saw no finished event,
 * replay (when allowed) what we missed, then end with the hash's state.
 */
static void
watch_check(struct printer *p, const char *id, bool replay)
{
	char kjob[KEY_MAX];
	redisReply *r;
	const char *state;

	keys_id(&en->keys, "job", id, kjob, sizeof kjob);
	r = redis_commandv(en->rc, "HMGET", kjob, "state", "error");
	state = r->element[0]->type == REDIS_REPLY_STRING ? r->element[0]->str : NULL;
	if (watch_final(state) && !p->done && replay)
		logs_replay(p, id);
	if (watch_final(state) && !p->done) {
		print_bar_clear(p);
		snprintf(p->status, sizeof p->status, "%s", state);
		p->done = true;
		if (!p->json) {
			const char *err = r->element[1]->type == REDIS_REPLY_STRING ? r->element[1]->str : "";
			printf("job %s is %s%s", id, print_safe(state), *err ? ": " : "");
			print_text(err, strlen(err));
			putchar('\n');
		} else {
			struct jbuf jb;
			print_json_begin(&jb);
			msgpack_pack_map(&jb.pk, 3);
			print_json_kv_str(&jb, "id", id);
			print_json_kv_str(&jb, "state", state);
			print_json_kv_str(&jb, "error",
			    r->element[1]->type == REDIS_REPLY_STRING ? r->element[1]->str : "");
			print_json_end(&jb);
		}
		print_flush();
	}
	freeReplyObject(r);
}

/* Print events of one job until it is done; the exit code of its status. */
static int
watch_loop(struct printer *p, const char *id, double timeout, bool replay)
{
	double deadline = timeout > 0 ? now_mono() + timeout : 0, checked = 0;
	redisReply *r;

	while (!p->done) {
		if (enq_interrupted) {
			print_bar_clear(p);
			enq_die(EXIT_INTERRUPTED, "interrupted; job %s goes on", id);
		}
		if (redis_poll(en->sub, WATCH_POLL_MS, &r) == 1) {
			watch_message(p, r);
			freeReplyObject(r);
			continue;
		}
		print_bar(p);
		if (now_mono() - checked >= WATCH_CHECK_SECS) {
			watch_check(p, id, replay);
			checked = now_mono();
		}
		if (deadline > 0 && now_mono() >= deadline && !p->done) {
			print_bar_clear(p);
			enq_die(EXIT_REDIS, "gave up waiting for job %s after %gs (it goes on)", id, timeout);
		}
	}
	print_bar_clear(p);
	print_flush();
	return print_status_exit(p->status);
}

/* The stored result, printed in full after a followed job finished. */
static void
watch_result(const char *id)
{
	char kres[KEY_MAX];
	msgpack_unpacked u;
	redisReply *r;

	keys_id(&en->keys, "result", id, kres, sizeof kres);
	r = redis_commandv(en->rc, "LINDEX", kres, "0");
	msgpack_unpacked_init(&u);
	if (r->type == REDIS_REPLY_STRING && print_unpack(r->str, r->len, &u))
		print_result(&u.data, false);
	msgpack_unpacked_destroy(&u);
	freeReplyObject(r);
}

/* submit --follow: subscribe, replay, then print live events. */
int
watch_job(const char *id, double timeout)
{
	struct printer p;
	char kprog[KEY_MAX];
	int rc;

	print_init(&p, false, en->json);
	enq_catch_signals();
	en->sub = redis_connect(&en->conf);
	redis_subscribe(en->sub, keys_id(&en->keys, "progress", id, kprog, sizeof kprog));
	logs_replay(&p, id);
	rc = watch_loop(&p, id, timeout, true);
	if (!en->json && strcmp(p.status, "dead") != 0)
		watch_result(id);
	redis_close(&en->sub);
	return rc;
}

/* Every job's lifecycle events until Ctrl-C. */
static int
watch_all(void)
{
	struct printer p;
	redisReply *r;

	print_init(&p, true, en->json);
	en->sub = redis_connect(&en->conf);
	redis_subscribe(en->sub, en->keys.events);
	if (!en->json) {
		printf("watching every job in namespace %s (Ctrl-C to stop)\n", en->conf.namespace);
		print_flush();
	}
	while (!enq_interrupted) {
		if (redis_poll(en->sub, WATCH_POLL_MS, &r) == 1) {
			watch_message(&p, r);
			freeReplyObject(r);
		}
	}
	redis_close(&en->sub);
	return EXIT_OK;
}

/* enqueue watch [ID] */
int
watch_main(int argc, char **argv)
{
	static const struct opt opts[] = { { "timeout", 0, true, O_TIMEOUT }, { NULL, 0, false, 0 } };
	struct opt_state st;
	struct printer p;
	const char *arg, *id = NULL;
	char kprog[KEY_MAX], err[ERR_MAX];
	double timeout = 0;
	int o, rc;

	opt_init(&st, argc, argv, "watch");
	while ((o = opt_next(&st, opts, &arg)) != OPT_END) {
		if (o == O_TIMEOUT) {
			if (parse_seconds(arg, &timeout, err, sizeof err) != 0)
				enq_die(EXIT_USAGE, "--timeout: %s", err);
		} else if (id != NULL)
			enq_usage("watch", "unexpected argument \"%s\"", arg);
		else
			id = enq_job_id("watch", arg);
	}
	enq_setup(true);
	enq_catch_signals();
	if (id == NULL)
		return watch_all();
	print_init(&p, false, en->json);
	en->sub = redis_connect(&en->conf);
	redis_subscribe(en->sub, keys_id(&en->keys, "progress", id, kprog, sizeof kprog));
	rc = watch_loop(&p, id, timeout, false);
	redis_close(&en->sub);
	return rc;
}
