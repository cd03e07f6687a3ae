/*
 * status.c: `enqueue status ID`: the job hash, the job's place in the
 * queue and its payload while it is queued or running, and its result.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "enqueue.h"

/* A unix time for people: local date and time, and how long ago. */
static void
status_time(const char *name, const char *value)
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
status_field(const char *name, const char *value)
{
	printf("  %-12s ", print_safe(name));
	print_text(value, strlen(value));
	putchar('\n');
}

/* The job hash, the well-known fields first. */
static void
status_hash(const redisReply *h)
{
	static const char *order[] = { "state", "worker", "attempt", "phase", "enqueued_at", "started_at",
		"finished_at", "exit_code", "error", "last_error", "requeues", "lost" };
	const size_t norder = sizeof order / sizeof order[0];

	for (size_t i = 0; i < norder; i++) {
		const char *v = redis_field(h, order[i]);
		if (v == NULL)
			continue;
		if (strstr(order[i], "_at") != NULL)
			status_time(order[i], v);
		else
			status_field(order[i], v);
	}
	for (size_t i = 0; i + 1 < h->elements; i += 2) {
		bool known = false;
		for (size_t j = 0; j < norder && !known; j++)
			known = strcmp(h->element[i]->str, order[j]) == 0;
		if (!known)
			status_field(h->element[i]->str, h->element[i + 1]->str);
	}
}

/*
 * A queued or running job's payload, from the worker's active list or
 * the queue: its index in the queue (with the queue's length in *qlen),
 * -2 when a worker holds it, -1 when it is in neither.
 */
static long
status_find(const redisReply *h, const char *id, msgpack_unpacked *payload, long *qlen)
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
status_main(int argc, char **argv)
{
	const char *id = enq_one_id(argc, argv, "status");
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
	at = status_find(h, id, &payload, &qlen);
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
		status_hash(h);
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
