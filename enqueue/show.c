/*
 * show.c: the commands that look at one job or at the queue: status,
 * queue, cancel and logs (and the stream replay that follow uses too).
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "enqueue.h"

#define REPLAY_BATCH "500"

/* The one job id a command takes. */
static const char *
show_one_id(int argc, char **argv, const char *cmd)
{
	static const struct opt none[] = { { NULL, 0, false, 0 } };
	struct opt_state st;
	const char *arg, *id = NULL;

	opt_init(&st, argc, argv, cmd);
	while (opt_next(&st, none, &arg) != OPT_END) {
		if (id != NULL)
			enq_usage(cmd, "unexpected argument \"%s\"", arg);
		id = arg;
	}
	return enq_job_id(cmd, id);
}

/* A unix time for people: local date and time, and how long ago. */
static void
show_time(const char *name, const char *value)
{
	char *end, ago[32], date[32];
	double t = strtod(value, &end);
	time_t tt = (time_t)t;
	struct tm tm;

	if (*value == '\0' || *end != '\0' || t <= 0) {
		printf("  %-12s %s\n", name, print_safe(value));
		return;
	}
	localtime_r(&tt, &tm);
	strftime(date, sizeof date, "%Y-%m-%d %H:%M:%S", &tm);
	printf("  %-12s %s (%s ago)\n", name, date, print_duration(now_real() - t, ago, sizeof ago));
}

/* One field of the job hash (anyone with Redis access may have written it). */
static void
show_field(const char *name, const char *value)
{
	printf("  %-12s ", print_safe(name));
	print_text(value, strlen(value));
	putchar('\n');
}

/* The job hash, the well-known fields first. */
static void
show_hash(const redisReply *h)
{
	static const char *order[] = { "state", "worker", "attempt", "phase", "enqueued_at", "started_at",
		"finished_at", "exit_code", "error", "last_error", "requeues", "lost" };
	const size_t norder = sizeof order / sizeof order[0];

	for (size_t i = 0; i < norder; i++) {
		const char *v = redis_field(h, order[i]);
		if (v == NULL)
			continue;
		if (strstr(order[i], "_at") != NULL)
			show_time(order[i], v);
		else
			show_field(order[i], v);
	}
	for (size_t i = 0; i + 1 < h->elements; i += 2) {
		bool known = false;
		for (size_t j = 0; j < norder && !known; j++)
			known = strcmp(h->element[i]->str, order[j]) == 0;
		if (!known)
			show_field(h->element[i]->str, h->element[i + 1]->str);
	}
}

/*
 * A queued or running job's payload, from the worker's active list or
 * the queue: its index in the queue (with the queue's length in *qlen),
 * -2 when a worker holds it, -1 when it is in neither.
 */
static long
show_find(const redisReply *h, const char *id, msgpack_unpacked *payload, long *qlen)
{
	const char *state = redis_field(h, "state"), *worker = redis_field(h, "worker");
	char key[KEY_MAX];
	long at;

	*qlen = 0;
	msgpack_unpacked_init(payload);
	if (state != NULL && strcmp(state, "running") == 0 && worker != NULL) {
		keys_id(&en->keys, "active", worker, key, sizeof key);
		if (redis_find_payload(en->rc, key, id, payload) >= 0)
			return -2;
	}
	if (state != NULL && strcmp(state, "queued") != 0)
		return -1;
	if ((at = redis_find_payload(en->rc, en->keys.queue, id, payload)) >= 0)
		*qlen = (long)redis_count(en->rc, "LLEN", en->keys.queue);
	return at;
}

/* enqueue status ID */
int
show_status(int argc, char **argv)
{
	const char *id = show_one_id(argc, argv, "status");
	char kjob[KEY_MAX], kres[KEY_MAX];
	msgpack_unpacked payload, result;
	redisReply *h, *res;
	bool has_result, has_payload;
	long at, qlen;

	enq_setup(true);
	keys_id(&en->keys, "job", id, kjob, sizeof kjob);
	keys_id(&en->keys, "result", id, kres, sizeof kres);
	h = redis_commandv(en->rc, "HGETALL", kjob);
	res = redis_commandv(en->rc, "LINDEX", kres, "0");
	msgpack_unpacked_init(&result);
	has_result = res->type == REDIS_REPLY_STRING && print_unpack(res->str, res->len, &result);
	if (h->elements == 0 && res->type != REDIS_REPLY_STRING) {
		freeReplyObject(h);
		freeReplyObject(res);
		enq_die(EXIT_FAILED, "job %s is unknown (no %s)", id, kjob);
	}
	at = show_find(h, id, &payload, &qlen);
	has_payload = at != -1;

	if (en->json) {
		struct jbuf jb;
		print_json_begin(&jb);
		msgpack_pack_map(&jb.pk, 5);
		print_json_kv_str(&jb, "id", id);
		mp_str(&jb.pk, "job");
		msgpack_pack_map(&jb.pk, h->elements / 2);
		for (size_t i = 0; i + 1 < h->elements; i += 2) {
			print_json_reply(&jb, h->element[i]);
			print_json_reply(&jb, h->element[i + 1]);
		}
		mp_str(&jb.pk, "queue_position");
		if (at >= 0)
			msgpack_pack_int64(&jb.pk, qlen - 1 - at);
		else
			msgpack_pack_nil(&jb.pk);
		mp_str(&jb.pk, "payload");
		if (has_payload)
			msgpack_pack_object(&jb.pk, payload.data);
		else
			msgpack_pack_nil(&jb.pk);
		mp_str(&jb.pk, "result");
		if (has_result)
			msgpack_pack_object(&jb.pk, result.data);
		else
			msgpack_pack_nil(&jb.pk);
		print_json_end(&jb);
	} else {
		printf("job %s\n", id);
		if (h->elements == 0)
			printf("  (no job hash: it expired or was never written)\n");
		show_hash(h);
		if (at >= 0)
			printf("  %-12s %ld of %ld (%ld job%s ahead)\n", "queue", qlen - at, qlen, qlen - 1 - at,
			    qlen - 1 - at == 1 ? "" : "s");
		if (has_payload) {
			printf("  %-12s ", "payload");
			mp_json(stdout, &payload.data);
			putchar('\n');
		}
		if (has_result)
			print_result(&result.data, false);
	}
	msgpack_unpacked_destroy(&payload);
	msgpack_unpacked_destroy(&result);
	freeReplyObject(h);
	freeReplyObject(res);
	print_flush();
	return EXIT_OK;
}

/* enqueue queue */
int
show_queue(int argc, char **argv)
{
	static const struct opt none[] = { { NULL, 0, false, 0 } };
	struct opt_state st;
	const char *arg;
	char pattern[KEY_MAX], prefix[KEY_MAX], *cursor;
	struct strv names = { 0 };
	long long *lens = NULL, total = 0, queued, delayed, dead;
	struct jbuf jb;

	opt_init(&st, argc, argv, "queue");
	if (opt_next(&st, none, &arg) != OPT_END)
		enq_usage("queue", "unexpected argument \"%s\"", arg);
	enq_setup(true);
	keys_id(&en->keys, "active", "", prefix, sizeof prefix);
	snprintf(pattern, sizeof pattern, "%s*", prefix);
	cursor = xstrdup("0");
	do {
		redisReply *r = redis_commandv(en->rc, "SCAN", cursor, "MATCH", pattern, "COUNT", "1000");
		free(cursor);
		cursor = xstrdup(r->element[0]->str);
		for (size_t i = 0; i < r->element[1]->elements; i++) {
			const char *key = r->element[1]->element[i]->str;
			if (!strv_has(&names, key))
				strv_push(&names, key);
		}
		freeReplyObject(r);
	} while (strcmp(cursor, "0") != 0);
	free(cursor);
	lens = xcalloc(names.n, sizeof *lens);
	for (size_t i = 0; i < names.n; i++)
		total += lens[i] = redis_count(en->rc, "LLEN", names.v[i]);
	queued = redis_count(en->rc, "LLEN", en->keys.queue);
	delayed = redis_count(en->rc, "ZCARD", en->keys.delayed);
	dead = redis_count(en->rc, "LLEN", en->keys.dead);

	if (en->json) {
		print_json_begin(&jb);
		msgpack_pack_map(&jb.pk, 5);
		mp_kv_int(&jb.pk, "queue", queued);
		mp_str(&jb.pk, "active");
		msgpack_pack_map(&jb.pk, names.n);
		for (size_t i = 0; i < names.n; i++) {
			mp_str(&jb.pk, names.v[i] + strlen(prefix));
			msgpack_pack_int64(&jb.pk, lens[i]);
		}
		mp_kv_int(&jb.pk, "active_total", total);
		mp_kv_int(&jb.pk, "delayed", delayed);
		mp_kv_int(&jb.pk, "dead", dead);
		print_json_end(&jb);
	} else {
		printf("queued   %lld\n", queued);
		printf("active   %lld\n", total);
		for (size_t i = 0; i < names.n; i++)
			printf("  %-30s %lld\n", names.v[i] + strlen(prefix), lens[i]);
		printf("delayed  %lld\n", delayed);
		printf("dead     %lld\n", dead);
	}
	free(lens);
	strv_free(&names);
	print_flush();
	return EXIT_OK;
}

/* enqueue cancel ID */
int
show_cancel(int argc, char **argv)
{
	const char *id = show_one_id(argc, argv, "cancel");
	char kjob[KEY_MAX], ts[32], state[32] = "";
	bool final = false, known;
	redisReply *r;
	enum status s;

	enq_setup(true);
	keys_id(&en->keys, "job", id, kjob, sizeof kjob);
	r = redis_commandv(en->rc, "HGET", kjob, "state");
	if ((known = r->type == REDIS_REPLY_STRING))
		snprintf(state, sizeof state, "%s", r->str);
	freeReplyObject(r);
	if (known && status_parse(state, &s) == 0)
		final = s != ST_QUEUED && s != ST_RUNNING;
	if (!known)
		enq_warn("job %s is not known (no %s); the cancel is recorded anyway", id, kjob);
	if (final)
		enq_warn("job %s already finished (%s); nothing to cancel", id, state);
	else {
		snprintf(ts, sizeof ts, "%.3f", now_real());
		freeReplyObject(redis_commandv(en->rc, "HSET", en->keys.cancel, id, ts));
	}
	if (en->json) {
		struct jbuf jb;
		print_json_begin(&jb);
		msgpack_pack_map(&jb.pk, 3);
		print_json_kv_str(&jb, "id", id);
		print_json_kv_str(&jb, "state", known ? state : NULL);
		mp_kv_bool(&jb.pk, "cancel_requested", !final);
		print_json_end(&jb);
	} else if (!final)
		printf("cancel requested for job %s%s%s%s\n", id, known ? " (" : "", state, known ? ")" : "");
	print_flush();
	return EXIT_OK;
}

/* Replay the job's stream through p, batch by batch. */
size_t
show_replay(struct printer *p, const char *id)
{
	char klog[KEY_MAX], start[64] = "-";
	size_t seen = 0;

	keys_id(&en->keys, "log", id, klog, sizeof klog);
	for (;;) {
		redisReply *r = redis_commandv(en->rc, "XRANGE", klog, start, "+", "COUNT", REPLAY_BATCH);
		size_t n = r->elements;
		for (size_t i = 0; i < n; i++) {
			const redisReply *e = r->element[i], *f;
			if (e->type != REDIS_REPLY_ARRAY || e->elements != 2)
				continue;
			f = e->element[1];
			for (size_t j = 0; f->type == REDIS_REPLY_ARRAY && j + 1 < f->elements; j += 2) {
				if (strcmp(f->element[j]->str, "event") == 0)
					print_event_raw(p, f->element[j + 1]->str, f->element[j + 1]->len);
			}
			snprintf(start, sizeof start, "(%s", e->element[0]->str);
			seen++;
		}
		freeReplyObject(r);
		if (n < (size_t)atoi(REPLAY_BATCH))
			break;
	}
	return seen;
}

/* enqueue logs ID */
int
show_logs(int argc, char **argv)
{
	const char *id = show_one_id(argc, argv, "logs");
	struct printer p;

	enq_setup(true);
	print_init(&p, false, en->json);
	p.bar = false;
	if (show_replay(&p, id) == 0)
		enq_die(EXIT_FAILED, "no events stored for job %s (it never started, or they expired)", id);
	print_flush();
	return EXIT_OK;
}
