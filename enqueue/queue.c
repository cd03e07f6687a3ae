/*
 * queue.c: `enqueue queue`: the lengths of the queue, of each worker's
 * active list, of the delayed retries and of the dead letters.
 */
#include <stdlib.h>
#include <string.h>

#include "enqueue.h"

/* enqueue queue */
int
queue_main(int argc, char **argv)
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
