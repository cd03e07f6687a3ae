/*
 * logs.c: `enqueue logs ID`: the events stored in the job's stream, and
 * the replay of that stream that submit --follow and watch use too.
 */
#include <stdlib.h>
#include <string.h>

#include "enqueue.h"

#define REPLAY_BATCH "500"

/* Replay the job's stream through p, batch by batch. */
size_t
logs_replay(struct printer *p, const char *id)
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
logs_main(int argc, char **argv)
{
	const char *id = enq_one_id(argc, argv, "logs");
	struct printer p;

	enq_setup(true);
	print_init(&p, false, en->json);
	p.bar = false;
	if (logs_replay(&p, id) == 0)
		enq_die(EXIT_FAILED, "no events stored for job %s (it never started, or they expired)", id);
	print_flush();
	return EXIT_OK;
}
