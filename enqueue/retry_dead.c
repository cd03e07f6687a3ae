/*
 * retry_dead.c: `enqueue retry-dead`: put chosen dead letters' original
 * payloads back on the queue.
 *
 * A retry removes the exact entry it read (LREM by value, so an index
 * that shifted because a worker pushed a new dead letter meanwhile does
 * not matter) and pushes the payload in one script
 * (enqueue/lua/retry_dead.lua), so two operators retrying the same entry
 * queue it once.  Only a payload that owns its job's record (its digest,
 * or no record left) goes back; a duplicate_id entry never does.
 */
#include <stdlib.h>
#include <string.h>

#include "enqueue.h"
#include "enqueue_lua.h"

enum { O_ALL = 1, O_ID };

/* Put one entry's payload back: the script's answer (1, 0, -1 or -2). */
static long long
retry_dead_requeue(const redisReply *e, const struct dead_entry *d)
{
	char kjob[KEY_MAX], kres[KEY_MAX], klog[KEY_MAX], now[32];
	const char *argv[12];
	size_t lens[12];
	redisReply *r;
	int argc = 0;
	long long done;

	snprintf(now, sizeof now, "%.6f", now_real());
	argv[argc++] = "EVAL";
	argv[argc++] = lua_retry_dead;
	argv[argc++] = d->id[0] ? "5" : "2";
	argv[argc++] = en->keys.dead;
	argv[argc++] = en->keys.queue;
	if (d->id[0]) {
		argv[argc++] = keys_id(&en->keys, "job", d->id, kjob, sizeof kjob);
		argv[argc++] = keys_id(&en->keys, "result", d->id, kres, sizeof kres);
		argv[argc++] = keys_id(&en->keys, "log", d->id, klog, sizeof klog);
	}
	for (int i = 0; i < argc; i++)
		lens[i] = strlen(argv[i]);
	lens[argc] = e->len;
	argv[argc++] = e->str;
	lens[argc] = d->payload_len;
	argv[argc++] = d->payload;
	lens[argc] = strlen(now);
	argv[argc++] = now;
	lens[argc] = strlen(d->error);
	argv[argc++] = d->error;
	r = redis_command(en->rc, argc, argv, lens);
	done = r->type == REDIS_REPLY_INTEGER ? r->integer : 0;
	freeReplyObject(r);
	return done;
}

/* The entries to retry: indices, all of them, or the newest of job want. */
static size_t
retry_dead_choose(const redisReply *r, const struct strv *idx, bool all, const char *want, size_t **out)
{
	msgpack_unpacked u;
	size_t n = 0;

	*out = xcalloc(all ? r->elements : (idx->n ? idx->n : 1), sizeof **out);
	if (all) {
		for (; n < r->elements; n++)
			(*out)[n] = n;
	} else if (want == NULL) {
		for (; n < idx->n; n++)
			(*out)[n] = (size_t)strtoull(idx->v[n], NULL, 10);
	} else {
		msgpack_unpacked_init(&u);
		for (size_t i = 0; i < r->elements && n == 0; i++) {
			struct dead_entry d;
			dead_decode(r->element[i], &u, &d);
			dead_payload_id(&d);
			if (strcmp(d.id, want) == 0)
				(*out)[n++] = i;
		}
		msgpack_unpacked_destroy(&u);
	}
	return n;
}

/* enqueue retry-dead INDEX... | --all | --id ID */
int
retry_dead_main(int argc, char **argv)
{
	static const struct opt opts[] = { { "all", 0, false, O_ALL }, { "id", 0, true, O_ID },
		{ NULL, 0, false, 0 } };
	struct opt_state st;
	struct strv idx = { 0 };
	const char *arg, *want = NULL;
	bool all = false;
	char err[ERR_MAX];
	size_t skipped = 0, n, *chosen;
	msgpack_unpacked u;
	redisReply *r;
	struct jbuf jb;
	int o;

	opt_init(&st, argc, argv, "retry-dead");
	while ((o = opt_next(&st, opts, &arg)) != OPT_END) {
		long long v;
		if (o == O_ALL)
			all = true;
		else if (o == O_ID)
			want = enq_job_id("retry-dead", arg);
		else if (parse_int(arg, 0, 100000000, &v, err, sizeof err) != 0)
			enq_die(EXIT_USAGE, "retry-dead: INDEX \"%s\": %s", arg, err);
		else
			strv_push(&idx, arg);
	}
	if ((idx.n > 0) + all + (want != NULL) != 1)
		enq_usage("retry-dead", "give INDEX..., --all or --id ID (one of them)");
	enq_setup(true);
	r = redis_commandv(en->rc, "LRANGE", en->keys.dead, "0", "-1");
	n = retry_dead_choose(r, &idx, all, want, &chosen);
	strv_free(&idx);
	if (want != NULL && n == 0)
		enq_die(EXIT_FAILED, "no dead letter for job %s", want);
	msgpack_unpacked_init(&u);
	if (en->json) {
		print_json_begin(&jb);
		msgpack_pack_map(&jb.pk, 1);
		mp_str(&jb.pk, "requeued");
		msgpack_pack_array(&jb.pk, n);
	}
	for (size_t k = 0; k < n; k++) {
		size_t i = chosen[k];
		struct dead_entry d = { .ok = false };
		bool ok = false;

		if (i >= r->elements) {
			enq_warn("no dead letter at index %zu (there are %zu)", i, r->elements);
		} else {
			dead_decode(r->element[i], &u, &d);
			dead_payload_id(&d);
			bool dup = strcmp(d.reason, "duplicate_id") == 0;
			long long v = d.payload != NULL && !dup ? retry_dead_requeue(r->element[i], &d) : 0;
			if (dup)
				enq_warn("dead letter %zu is a second payload with the id of job %s (duplicate_id): "
				    "it is never requeued; submit it under a new id", i, d.id);
			else if (d.payload == NULL && d.payload_len > 0)
				enq_warn("dead letter %zu kept only the hashes of its %zu-byte payload; left alone",
				    i, d.payload_len);
			else if (d.payload == NULL)
				enq_warn("dead letter %zu has no payload; left alone", i);
			else if (v == -1)
				enq_warn("dead letter %zu: job %s is queued or running; left alone", i, d.id);
			else if (v < 0)
				enq_warn("dead letter %zu: job %s belongs to another payload; left alone "
				    "(submit it under a new id)", i, d.id);
			else if (v == 0)
				enq_warn("dead letter %zu was removed meanwhile; skipped", i);
			else if (!en->json)
				printf("requeued dead letter %zu%s%s\n", i, d.id[0] ? ": job " : "", d.id);
			ok = v > 0;
		}
		skipped += !ok;
		if (en->json) {
			msgpack_pack_map(&jb.pk, 3);
			mp_kv_int(&jb.pk, "index", (int64_t)i);
			print_json_kv_str(&jb, "id", d.id[0] ? d.id : NULL);
			mp_kv_bool(&jb.pk, "requeued", ok);
		}
	}
	if (en->json)
		print_json_end(&jb);
	else if (n == 0)
		printf("no dead letters\n");
	msgpack_unpacked_destroy(&u);
	freeReplyObject(r);
	free(chosen);
	print_flush();
	return skipped > 0 ? EXIT_FAILED : EXIT_OK;
}
