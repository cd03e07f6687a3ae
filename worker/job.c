/*
 * job.c: one build, from the payload BLMOVE gave us to its one result:
 * the state machine.  jobrun.c runs the child, jobend.c turns its end
 * into the result; this file holds the table of the transitions, the
 * fetch to the claim, and the end of a job.
 *
 * Every edge job_set_state() allows (job_edges below):
 *
 *   fetched -> CLAIMING        (the initial state; no edge)
 *   CLAIMING   -> UNPACKING    profile_archive: unpack it before the claim
 *   UNPACKING  -> CLAIMING     unpacked
 *   UNPACKING  -> REFUSING     bad_archive, or no directory to unpack it in
 *   CLAIMING   -> REFUSING     refused before the claim, or Redis refused the claim
 *   CLAIMING   -> STARTING     claimed
 *   CLAIMING   -> COLLECTING   cancelled before it started (no artifacts)
 *   CLAIMING   -> DONE         gone, duplicate, or claimed while the worker stops
 *   STARTING   -> RUNNING      spawned (also the second run after a name conflict)
 *   STARTING   -> COLLECTING   no output directory or no spawn; a name conflict that was none
 *   STARTING   -> DONE         a drain or lost lease between a name conflict's two runs
 *   RUNNING    -> STOPPING     timeout, cancel, drain, lease lost
 *   RUNNING    -> STARTING     the runtime exited 125: the name-conflict check
 *   RUNNING    -> COLLECTING   the build ended by itself
 *   STOPPING   -> COLLECTING   the build ended after a timeout or cancel
 *   STOPPING   -> DONE         drained or lease lost: no result from us
 *   COLLECTING -> UPLOADING    succeeded, with upload.url
 *   COLLECTING -> FINISHING    the finish script
 *   UPLOADING  -> FINISHING    uploaded (or the upload failed)
 *   UPLOADING  -> DONE         the upload abandoned by a shutdown
 *   FINISHING  -> DONE         the finish script answered
 *   REFUSING   -> DONE         the refuse script answered
 *
 * Any other edge is a bug: job_set_state() refuses it (the state stays),
 * logs it, and in strict builds (-DJOB_STRICT_STATES: the sanitizer
 * builds; the unit tests set job_strict_states) dies on it.
 *
 * The job embeds every watcher it needs (w.data = job).  Invariant: a job
 * is finished only when its child is reaped AND both pipes are at EOF;
 * either can come first.  A job is freed only from DONE, through
 * defer_free(), never inside one of its own callbacks, and never while a
 * Redis command holding it as callback argument is unanswered (the
 * finish or refuse script is always the job's last command).
 */
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sha1.h>
#include <sha2.h>

#include "job.h"

static const char *job_state_names[] = {
	[JOB_CLAIMING] = "claiming", [JOB_STARTING] = "starting", [JOB_RUNNING] = "running",
	[JOB_STOPPING] = "stopping", [JOB_COLLECTING] = "collecting", [JOB_FINISHING] = "finishing",
	[JOB_REFUSING] = "refusing", [JOB_DONE] = "done",
	[JOB_UNPACKING] = "unpacking", [JOB_UPLOADING] = "uploading",
};

#define E(s) (1u << (s))
/* The transitions: job_edges[from] has the bit of every state it may go to. */
static const unsigned job_edges[] = {
	[JOB_UNPACKING] = E(JOB_CLAIMING) | E(JOB_REFUSING),
	[JOB_CLAIMING] = E(JOB_UNPACKING) | E(JOB_REFUSING) | E(JOB_STARTING) | E(JOB_COLLECTING) |
	    E(JOB_DONE),
	[JOB_STARTING] = E(JOB_RUNNING) | E(JOB_COLLECTING) | E(JOB_DONE),
	[JOB_RUNNING] = E(JOB_STOPPING) | E(JOB_STARTING) | E(JOB_COLLECTING),
	[JOB_STOPPING] = E(JOB_COLLECTING) | E(JOB_DONE),
	[JOB_COLLECTING] = E(JOB_UPLOADING) | E(JOB_FINISHING),
	[JOB_UPLOADING] = E(JOB_FINISHING) | E(JOB_DONE),
	[JOB_FINISHING] = E(JOB_DONE),
	[JOB_REFUSING] = E(JOB_DONE),
	[JOB_DONE] = 0,
};
#undef E

#ifdef JOB_STRICT_STATES
bool job_strict_states = true;
#else
bool job_strict_states = false;
#endif

static struct job_hooks job_hooks;

static void job_emitted(struct job *j, enum emit_answer a);

/* A state's name for logs. */
const char *
job_state_name(enum job_state s)
{
	return job_state_names[s];
}

/* The one place a job changes state: only along an edge of job_edges. */
bool
job_set_state(struct job *j, enum job_state s)
{
	const char *id = j->id[0] ? j->id : "?";

	if ((job_edges[j->state] & (1u << s)) == 0) {
		if (job_strict_states)
			fatalx("job %s: illegal state transition %s -> %s", id, job_state_name(j->state),
			    job_state_name(s));
		log_err("job %s: illegal state transition %s -> %s refused (a bug)", id,
		    job_state_name(j->state), job_state_name(s));
		return false;
	}
	log_debug("job %s: %s -> %s", id, job_state_name(j->state), job_state_name(s));
	j->state = s;
	return true;
}

/* Register what the job module tells main.c; the event answers come here. */
void
job_init(const struct job_hooks *h)
{
	job_hooks = *h;
	event_init(job_emitted);
	collect_init(job_emitted);
}

/* Give the slot back so the fetch can ask for another job. */
void
job_release_slot(struct job *j)
{
	if (!j->has_slot)
		return;
	j->has_slot = false;
	wk->held--;
	if (job_hooks.slot_freed != NULL)
		job_hooks.slot_freed();
}

/* Free a job (from the deferred list). */
static void
job_free(void *p)
{
	struct job *j = p;

	output_close(&j->out);
	output_close(&j->err);
	cgroup_close(&j->cg);
	collect_free(j->collect);
	unpack_free(j->unpack);
	upload_free(j->upload);
	if (j->profile_fd >= 0)
		close(j->profile_fd);
	strv_free(&j->tail);
	payload_free(&j->spec);
	free(j->payload);
	free(j);
}

/* Stop the job's timers and watchers of the groups in which (JOB_T_*). */
void
job_timers_stop(struct job *j, unsigned which)
{
	if (which & JOB_T_LIMITS) {
		ev_timer_stop(EV_DEFAULT, &j->warn_timer);
		ev_timer_stop(EV_DEFAULT, &j->timeout_timer);
	}
	if (which & JOB_T_KILL)
		ev_timer_stop(EV_DEFAULT, &j->kill_timer);
	if (which & JOB_T_WATCH)
		watch_stop(j);
	if (which & JOB_T_POLL)
		ev_timer_stop(EV_DEFAULT, &j->cancel_poll);
}

/* The job is over for this worker: forget it. */
void
job_done(struct job *j)
{
	job_set_state(j, JOB_DONE);
	job_release_slot(j);
	paths_release(j);	/* the output may be someone else's from now on */
	job_timers_stop(j, JOB_T_ALL);
	ev_child_stop(EV_DEFAULT, &j->child);
	TAILQ_REMOVE(&wk->jobs, j, entry);
	if (j->profile_owned)
		outdir_remove(j->profile_path);	/* the unpacked profile_archive */
	wk->done++;
	if (j->emits == 0)
		defer_free(job_free, j);
	if (job_hooks.job_gone != NULL)
		job_hooks.job_gone();
}

/*
 * An emit script answered (or was dropped).  A job that ended without a
 * finish script (drained, lease lost) may still have events in flight
 * whose callbacks hold it: it is freed only after the last one.
 */
void
job_emit_answered(struct job *j)
{
	if (--j->emits == 0 && j->state == JOB_DONE)
		defer_free(job_free, j);
}

/* An event was answered: a lost lease or a cancel it reports, then its hold on the job ends. */
static void
job_emitted(struct job *j, enum emit_answer a)
{
	if (a == EMIT_LEASE_LOST)
		job_lease_lost(j);
	else if (a == EMIT_CANCEL)
		job_cancel_seen(j);
	job_emit_answered(j);
}

/*
 * End a job whose build never ran (cancelled before it started, no
 * output directory, no spawn): its result has status st and the error
 * fmt, no artifacts.  The slot goes back now.
 */
void
job_end_early(struct job *j, enum status st, const char *fmt, ...)
{
	va_list ap;

	if (j->finished_at == 0)
		j->finished_at = now_real();
	j->status = st;
	j->exit_code = -1;
	va_start(ap, fmt);
	vsnprintf(j->error, sizeof j->error, fmt, ap);
	va_end(ap);
	job_release_slot(j);
	job_set_state(j, JOB_COLLECTING);
	j->collect = collect_start("", job_collected, j);
}

/* Dead-letter the job's payload; the job is over once Redis answered. */
static void
job_refuse(struct job *j, enum refusal r, const char *msg)
{
	job_set_state(j, JOB_REFUSING);
	fetch_refuse(j, r, msg, job_done);
}

/* The claim's answer: run it, record it cancelled, or let it go. */
static void
job_claimed(redisReply *r, void *arg)
{
	struct job *j = arg;
	const char *verdict;

	if (r == NULL)
		return;	/* only at exit */
	if (r->type != REDIS_REPLY_ARRAY || r->elements < 3 || r->element[0]->type != REDIS_REPLY_STRING) {
		/*
		 * Transient errors (BUSY, OOM, MISCONF, NOSCRIPT, LOADING...) never
		 * get here: the outbox sends the claim again.  This one lasts (a
		 * key of the job with the wrong type, say): putting the payload
		 * back would take it again at once, so it is dead-lettered.
		 */
		char msg[ERR_MAX];
		snprintf(msg, sizeof msg, "Redis refused the claim: %s",
		    r->type == REDIS_REPLY_ERROR ? r->str : "an answer of the wrong shape");
		job_refuse(j, REFUSE_CLAIM, msg);
		return;
	}
	verdict = r->element[0]->str;
	if (wk->stopping) {
		/* Claimed while we stop: the release at exit puts it back. */
		job_done(j);
		return;
	}
	j->attempt = (long)r->element[1]->integer;
	j->seq = (uint64_t)r->element[2]->integer;
	if (strcmp(verdict, "gone") == 0) {
		log_info("job %s: no longer in our active list; skipping it", j->id);
		job_done(j);
		return;
	}
	if (strcmp(verdict, "duplicate") == 0) {
		/* The claim script dead-lettered it and left the real job alone. */
		wk->m.refused++;
		log_warn("refused a job %s: duplicate_id: %s", j->id, r->elements > 3 &&
		    r->element[3]->type == REDIS_REPLY_STRING ? r->element[3]->str : "id already in use");
		job_done(j);
		return;
	}
	j->started_at = now_real();
	if (strcmp(verdict, "cancelled") == 0) {
		log_notice("job %s: cancelled before it started", j->id);
		j->stop = STOP_CANCEL;
		j->finished_at = j->started_at;
		job_end_early(j, ST_CANCELLED, "cancelled before it started");
		return;
	}
	job_set_state(j, JOB_STARTING);
	j->started_mono = now_mono();
	snprintf(j->cidfile, sizeof j->cidfile, "%s/%s.%ld.cid", wk->cid_dir, j->id, j->attempt);
	if (j->spec.output == NULL && !job_own_output(j))
		return;
	job_spawn(j);
	if (j->state != JOB_STARTING)
		return;
	job_set_state(j, JOB_RUNNING);

	log_info("job %s: started (attempt %ld, %s)", j->id, j->attempt, runtime_name(&wk->rt));
	job_run_timers(j);
}

/* Send the claim script. */
static void
job_claim(struct job *j)
{
	const struct config *c = wk->conf;
	size_t so, ao;
	msgpack_sbuffer started;

	if (j->state == JOB_UNPACKING)
		job_set_state(j, JOB_CLAIMING);
	if (!j->spec.has_epoch)
		j->spec.source_date_epoch = (int64_t)now_real();
	if (j->spec.cpus > wk->host_cpus) {
		j->cpus_clamped_from = j->spec.cpus;
		j->spec.cpus = wk->host_cpus;
	}
	j->tail.n = (size_t)c->log_tail_lines;
	j->tail.v = xcalloc(j->tail.n + 1, sizeof *j->tail.v);
	sandbox_name(c->namespace, j->id, j->cname, sizeof j->cname);

	/* The claim script sends `started` itself, with the seq and attempt it decides. */
	msgpack_sbuffer_init(&started);
	event_started(j, &started, &so, &ao);
	script_claim(&(struct script_claim) {
	    .id = j->id, .payload = j->payload, .payload_len = j->payload_len, .now = now_real(),
	    .started = started.data, .started_len = started.size, .seq_off = so, .att_off = ao,
	}, job_claimed, j);
	msgpack_sbuffer_destroy(&started);
}

/* defer_free() of an unpack. */
static void
job_unpack_free(void *p)
{
	unpack_free(p);
}

/*
 * profile_archive is unpacked (or refused): claim, or dead-letter it as
 * bad_archive.  Before the claim, so a refused job never ran.  Called
 * from the unpack's own watcher: the unpack is freed on the next turn.
 * The unpacked directory is then held like a path-mode profile.
 */
static void
job_unpacked(struct job *j)
{
	const char *err;
	char msg[ERR_MAX], e2[ERR_MAX];
	int rc = unpack_result(j->unpack, &err);

	snprintf(msg, sizeof msg, "%s", err);
	defer_free(job_unpack_free, j->unpack);
	j->unpack = NULL;
	if (rc == 0 && paths_adopt(j, false, j->profile_fd, e2, sizeof e2) != 0) {
		rc = -1;
		snprintf(msg, sizeof msg, "profile_archive: cannot hold the unpacked directory: %s", e2);
	}
	close(j->profile_fd);
	j->profile_fd = -1;
	if (rc != 0)
		job_refuse(j, REFUSE_ARCHIVE, msg);
	else
		job_claim(j);
}

/* Make the job's own profile directory and unpack profile_archive into it. */
static void
job_unpack(struct job *j)
{
	const struct config *c = wk->conf;
	struct unpack_caps caps = { c->profile_max_entries, c->profile_max_bytes, c->profile_max_depth };
	char err[ERR_MAX], msg[ERR_MAX];

	job_set_state(j, JOB_UNPACKING);
	if (outdir_make(j->id, NULL, j->profile_path, sizeof j->profile_path, &j->profile_fd, err,
	    sizeof err) != 0) {
		snprintf(msg, sizeof msg, "profile_archive: no directory to unpack it in: %s", err);
		job_refuse(j, REFUSE_ARCHIVE, msg);
		return;
	}
	j->profile_owned = true;
	j->unpack = unpack_start(j->profile_fd, j->spec.profile_archive, j->spec.profile_archive_len, &caps,
	    job_unpacked, j);
}

/* A payload arrived from BLMOVE: validate, hold its directories, unpack, claim. */
void
job_fetched(const char *payload, size_t len, const char *sha1, const char *sha256)
{
	const struct config *c = wk->conf;
	struct job *j = xcalloc(1, sizeof *j);
	char err[ERR_MAX], e2[ERR_MAX];
	enum refusal r;

	/*
	 * A payload over max_payload is refused unread: the worker keeps its
	 * hashes, not a copy (the refuse script finds it in our active list
	 * by length and sha1, and keeps its sha256 and first bytes).  The
	 * fetch reader hashed it already (payload NULL), in hiredis's buffer.
	 */
	if (payload == NULL) {
		snprintf(j->payload_sha1, sizeof j->payload_sha1, "%s", sha1);
		snprintf(j->payload_sha256, sizeof j->payload_sha256, "%s", sha256);
	} else {
		SHA1Data((const uint8_t *)payload, len, j->payload_sha1);
		if (len > c->max_payload)
			SHA256Data((const uint8_t *)payload, len, j->payload_sha256);
		else {
			j->payload = xmalloc(len + 1);
			memcpy(j->payload, payload, len);
			j->payload[len] = '\0';
		}
	}
	j->payload_len = len;
	TAILQ_INIT(&j->ev_wait);
	j->phase = -1;
	j->exit_code = -1;
	j->has_slot = true;
	wk->held++;
	TAILQ_INSERT_TAIL(&wk->jobs, j, entry);
	job_run_init(j);
	watch_init(j);
	j->profile_fd = -1;
	j->state = JOB_CLAIMING;

	r = payload_decode(payload, len, c, &j->spec, err, sizeof err);
	snprintf(j->id, sizeof j->id, "%s", j->spec.id);
	if (r == REFUSE_NONE && paths_take(j, e2, sizeof e2) != 0) {
		r = REFUSE_PATH;
		snprintf(err, sizeof err, "%s", e2);
	}
	/* builds_root/jobs/ is the worker's own tree: no producer names it. */
	if (r == REFUSE_NONE && ((j->spec.profile != NULL && outdir_is_owned(j->profile_path)) ||
	    (j->spec.output != NULL && outdir_is_owned(j->output_path)))) {
		r = REFUSE_PATH;
		snprintf(err, sizeof err, "%s: leads into builds_root/%s/, which is the worker's own",
		    j->spec.output != NULL && outdir_is_owned(j->output_path) ? "output" : "profile", JOBS_DIR);
	}
	if (r != REFUSE_NONE) {
		job_refuse(j, r, err);
		return;
	}
	if (j->spec.profile_archive != NULL) {
		job_unpack(j);
		return;
	}
	job_claim(j);
}
