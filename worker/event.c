/*
 * event.c: building a job's events and its result, and sending them.
 *
 * Every event goes through the emit script, which publishes it and adds
 * it to the job's stream only while this worker holds the job's lease,
 * and answers whether a cancel was asked.  seq is ours to count: the
 * claim told us the last seq in the stream, so a new attempt continues it.
 *
 * One emit of a job is in flight at a time; the job's next events wait
 * here (event_wait), and its finish waits for the last (event_idle).
 * Redis may refuse an emit before it runs (BUSY, MISCONF...: rconnqueue.c
 * sends it again) and run the next, already sent, once the error has
 * cleared: that one would take the stream past the refused one's seq,
 * and the emit script would then take the refused one, sent again, for a
 * replay and skip it (its lines lost).  Waiting for each answer keeps a
 * job's events in order whatever Redis refuses.  The waiting events
 * count toward outbox_max (event_backlog) as the outbox's do.
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

/* An event waiting for the job's emit in flight to be answered. */
struct event_wait {
	TAILQ_ENTRY(event_wait) entry;
	struct script_emit e;	/* its strings point into data */
	enum rq_kind kind;
	size_t size;
	char data[];		/* type, phase, the event */
};

static size_t event_waiting;	/* bytes in every job's event_wait */

static void event_emitted(redisReply *r, void *arg);

/* Where every emit's answer goes (job.c's). */
void
event_init(void (*answered)(struct job *j, enum emit_answer a))
{
	event_answered = answered;
}

/* The bytes of events not yet sent: the outbox's and those waiting here. */
size_t
event_backlog(void)
{
	return rconn_outbox_bytes(wk->cmd) + event_waiting;
}

/*
 * Send one emit (the job has none in flight).  A droppable one (log
 * batch, stats, upload progress) is dropped, and answered failed, when
 * the backlog is over outbox_max, as the outbox itself would: so a NULL
 * answer from the outbox means only that the connection is going away.
 */
static void
event_write(struct job *j, const struct script_emit *e, enum rq_kind kind)
{
	if (kind == RQ_DROP && event_backlog() > wk->conf->outbox_max) {
		if (event_answered != NULL)
			event_answered(j, EMIT_FAILED);
		return;
	}
	j->ev_busy = true;
	script_emit(e, kind, event_emitted, j);
}

/* The job's emit in flight was answered: send its next event, or it is idle. */
static void
event_next(struct job *j, bool closing)
{
	struct event_wait *w;
	void (*idle)(struct job *);

	j->ev_busy = false;
	while (!j->ev_busy && (w = TAILQ_FIRST(&j->ev_wait)) != NULL) {
		TAILQ_REMOVE(&j->ev_wait, w, entry);
		event_waiting -= w->size;
		if (closing) {
			/* The connection is going away (at exit): nothing more is sent. */
			if (event_answered != NULL)
				event_answered(j, EMIT_FAILED);
		} else
			event_write(j, &w->e, w->kind);
		free(w);
	}
	if (!j->ev_busy && !closing && (idle = j->ev_idle) != NULL) {
		j->ev_idle = NULL;
		idle(j);
	}
}

/* Whether an event of j is in flight or waiting. */
bool
event_busy(const struct job *j)
{
	return j->ev_busy || !TAILQ_EMPTY(&j->ev_wait);
}

/* Run idle(j) once no event of j is in flight or waiting: now, or after the last answer. */
void
event_idle(struct job *j, void (*idle)(struct job *))
{
	if (!event_busy(j)) {
		idle(j);
		return;
	}
	j->ev_idle = idle;
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
	/*
	 * The job may be freed once its last hold is answered (defer_free:
	 * not before this callback returns), and it holds one for each event
	 * still waiting, so it is here for event_next.
	 */
	if (event_answered != NULL)
		event_answered(j, a);
	event_next(j, r == NULL);
}

/* Send the event in ep (and free its buffer), or queue it behind the job's emit in flight. */
void
event_send(struct job *j, struct event_msg *ep, const char *type, enum rq_kind kind, const char *phase)
{
	struct script_emit e = {
	    .id = j->id, .attempt = j->attempt, .seq = j->seq, .type = type, .event = ep->sb.data,
	    .event_len = ep->sb.size, .to_events = strcmp(type, "log") != 0, .phase = phase,
	};
	struct event_wait *w;
	size_t tl = strlen(type) + 1, pl = phase != NULL ? strlen(phase) + 1 : 0;
	char *p;

	j->emits++;
	if (!j->ev_busy && TAILQ_EMPTY(&j->ev_wait)) {
		event_write(j, &e, kind);
		msgpack_sbuffer_destroy(&ep->sb);
		return;
	}
	w = xmalloc(sizeof *w + tl + pl + ep->sb.size);
	w->kind = kind;
	w->size = tl + pl + ep->sb.size;
	p = w->data;
	memcpy(p, type, tl);
	e.type = p;
	p += tl;
	if (phase != NULL) {
		memcpy(p, phase, pl);
		e.phase = p;
		p += pl;
	}
	memcpy(p, ep->sb.data, ep->sb.size);
	e.event = p;
	w->e = e;
	TAILQ_INSERT_TAIL(&j->ev_wait, w, entry);
	event_waiting += w->size;
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
