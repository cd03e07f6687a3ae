/*
 * event.c: building a job's events and its result, and sending them.
 *
 * Every event goes through the emit script, which publishes it and adds
 * it to the job's stream only while this worker holds the job's lease,
 * and answers whether a cancel was asked.  seq is ours to count: the
 * claim told us the last seq in the stream, so a new attempt continues it.
 */
#include <stdlib.h>
#include <string.h>

#include "job.h"

/* Start an event map: the common fields, then nfields of the type's own. */
void
event_begin(struct job *j, struct event_msg *ep, const char *type, int nfields)
{
	msgpack_sbuffer_init(&ep->sb);
	msgpack_packer_init(&ep->pk, &ep->sb, msgpack_sbuffer_write);
	msgpack_pack_map(&ep->pk, (size_t)(5 + nfields));
	mp_kv_str(&ep->pk, "id", j->id);
	mp_kv_uint(&ep->pk, "seq", ++j->seq);
	mp_kv_double(&ep->pk, "ts", now_real());
	mp_kv_str(&ep->pk, "type", type);
	mp_kv_int(&ep->pk, "attempt", j->attempt);
}

/* A uint32 of fixed width, for the claim script to overwrite. */
static size_t
event_placeholder(msgpack_sbuffer *sb)
{
	size_t off = sb->size;

	msgpack_sbuffer_write(sb, "\xce\0\0\0\0", 5);
	return off;
}

/*
 * The `started` event, sent by the claim script in the same step that
 * takes the lease.  seq and attempt are known only there: they are packed
 * as fixed-width uint32 placeholders whose offsets the script patches.
 */
void
event_started(struct job *j, msgpack_sbuffer *sb, size_t *seq_off, size_t *att_off)
{
	msgpack_packer pk;

	msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
	msgpack_pack_map(&pk, (size_t)(9 + (j->cpus_clamped_from > 0)));
	mp_kv_str(&pk, "id", j->id);
	mp_str(&pk, "seq");
	*seq_off = event_placeholder(sb);
	mp_kv_double(&pk, "ts", now_real());
	mp_kv_str(&pk, "type", "started");
	mp_str(&pk, "attempt");
	*att_off = event_placeholder(sb);
	mp_kv_str(&pk, "worker", wk->id);
	mp_kv_str(&pk, "runtime", runtime_name(&wk->rt));
	mp_kv_str(&pk, "image", j->spec.image);
	mp_str(&pk, "limits");
	msgpack_pack_map(&pk, 5);
	mp_kv_uint(&pk, "memory", j->spec.memory);
	mp_kv_double(&pk, "cpus", j->spec.cpus);
	mp_kv_int(&pk, "pids", wk->conf->pids_limit);
	mp_kv_double(&pk, "timeout", j->spec.timeout);
	mp_kv_double(&pk, "warning", j->spec.warning);
	if (j->cpus_clamped_from > 0) {
		char msg[128];
		snprintf(msg, sizeof msg, "cpus lowered from %g to this host's %d", j->cpus_clamped_from,
		    wk->host_cpus);
		mp_kv_str(&pk, "clamped", msg);
	}
}

static void (*event_answered)(struct job *, enum emit_answer);

/* Where every emit's answer goes (job.c's). */
void
event_init(void (*answered)(struct job *j, enum emit_answer a))
{
	event_answered = answered;
}

/* The emit script's answer: lease lost, sent, or sent with a cancel asked. */
static void
event_emitted(redisReply *r, void *arg)
{
	struct job *j = arg;
	enum emit_answer a = EMIT_SENT;

	if (r == NULL)
		a = EMIT_FAILED;	/* dropped at exit */
	else if (r->type == REDIS_REPLY_ERROR) {
		log_warn("job %s: event refused by Redis: %s", j->id, r->str);
		a = EMIT_FAILED;
	} else if (r->type == REDIS_REPLY_INTEGER && r->integer == 0)
		a = EMIT_LEASE_LOST;
	else if (r->type == REDIS_REPLY_INTEGER && r->integer == 2)
		a = EMIT_CANCEL;
	if (event_answered != NULL)
		event_answered(j, a);
}

/* Send the event in ep (and free its buffer). */
void
event_send(struct job *j, struct event_msg *ep, const char *type, enum rq_kind kind, const char *phase)
{
	j->emits++;
	script_emit(&(struct script_emit) {
	    .id = j->id, .attempt = j->attempt, .seq = j->seq, .type = type, .event = ep->sb.data,
	    .event_len = ep->sb.size, .to_events = strcmp(type, "log") != 0, .phase = phase,
	}, kind, event_emitted, j);
	msgpack_sbuffer_destroy(&ep->sb);
}

/* The result map of j, as the contract defines it; every str valid UTF-8. */
void
event_result(struct job *j, msgpack_sbuffer *sb)
{
	msgpack_packer pk;
	size_t n, start;

	msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
	msgpack_pack_map(&pk, 14);
	mp_kv_str(&pk, "id", j->id);
	mp_kv_str(&pk, "status", status_name(j->status));
	mp_kv_int(&pk, "exit_code", j->exit_code);
	mp_kv_double(&pk, "duration",
	    j->started_at > 0 && j->finished_at >= j->started_at ? j->finished_at - j->started_at : 0);
	mp_kv_double(&pk, "started_at", j->started_at);
	mp_kv_double(&pk, "finished_at", j->finished_at);
	mp_kv_str(&pk, "worker", wk->id);
	mp_kv_int(&pk, "attempt", j->attempt);
	mp_kv_str(&pk, "image", j->spec.image ? j->spec.image : "");

	mp_str(&pk, "artifacts");
	n = j->collect ? collect_count(j->collect) : 0;
	msgpack_pack_array(&pk, n);
	for (size_t i = 0; i < n; i++) {
		const struct artifact *a = collect_get(j->collect, i);
		bool up = j->spec.upload_url != NULL, sent = false;
		char *url = NULL;
		msgpack_pack_map(&pk, up ? 5 : 3);
		mp_str(&pk, "name");
		utf8_pack(&pk, a->name, strlen(a->name));	/* a file name is any bytes */
		mp_kv_uint(&pk, "size", a->size);
		mp_kv_str(&pk, "sha256", a->sha256);
		if (up) {
			/* The URL as shown (no userinfo, no query: they may be credentials). */
			const char *shown = upload_url(j->upload, i, &sent);
			if (shown == NULL) {
				char *target = upload_target(j->spec.upload_url, a->name);
				shown = url = upload_display(target);
				free(target);
			}
			mp_kv_str(&pk, "url", shown);
			mp_kv_bool(&pk, "uploaded", sent);
			free(url);
		}
	}
	mp_str(&pk, "error");
	utf8_pack(&pk, j->error, strlen(j->error));

	/* The tail ring, oldest line first. */
	mp_str(&pk, "log_tail");
	n = 0;
	for (size_t i = 0; i < j->tail.n; i++)
		n += j->tail.v[i] != NULL;
	msgpack_pack_array(&pk, n);
	start = j->tail.n ? j->tail_next % j->tail.n : 0;
	for (size_t i = 0; i < j->tail.n; i++) {
		const char *line = j->tail.v[(start + i) % j->tail.n];
		if (line != NULL)
			utf8_pack(&pk, line, strlen(line));
	}
	mp_kv_uint(&pk, "dropped_lines", j->lines_dropped);
	mp_str(&pk, "meta");
	if (j->spec.meta != NULL)
		msgpack_sbuffer_write(sb, j->spec.meta, j->spec.meta_len);
	else
		msgpack_pack_nil(&pk);
}

/* An upload event: the artifact's name, bytes sent so far, its size, its URL as shown. */
void
event_upload(struct job *j, const char *name, uint64_t bytes, uint64_t total, const char *url,
    enum rq_kind kind)
{
	struct event_msg ep;

	event_begin(j, &ep, "upload", 4);
	mp_str(&ep.pk, "name");
	utf8_pack(&ep.pk, name, strlen(name));
	mp_kv_uint(&ep.pk, "bytes", bytes);
	mp_kv_uint(&ep.pk, "total", total);
	mp_kv_str(&ep.pk, "url", url);
	event_send(j, &ep, "upload", kind, NULL);
}
