/*
 * cancel.c: `enqueue cancel ID`: ask the workers to cancel a job
 * (HSET {ns}:cancel ID <now>), unless it has finished already.
 */
#include <string.h>

#include "enqueue.h"

/* enqueue cancel ID */
int
cancel_main(int argc, char **argv)
{
	const char *id = enq_one_id(argc, argv, "cancel");
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
