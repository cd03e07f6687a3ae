/*
 * jobend.c: the end of a job's build: its outcome (outcome.c), the
 * container's removal, a retry's due time, the artifacts (collect.c), the
 * upload (upload.c) and the finish script that records the one result.
 */
#include <math.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "job.h"

static void job_finish(struct job *j);

/* Child reaped and pipes at EOF: decide the outcome, clean up, collect. */
void
job_end(struct job *j)
{
	const struct config *c = wk->conf;
	struct strv argv = { 0 };
	char cid[128];

	job_timers_stop(j, JOB_T_KILL);
	watch_end(j);	/* the last word on an OOM kill */
	if (job_conflict_begin(j))
		return;
	job_timers_stop(j, JOB_T_ALL);

	j->finished_at = now_real();
	j->status = outcome_decide(wk->rt.kind, j->wstatus, j->oom, j->stop, j->spec.memory, j->spec.timeout,
	    &j->exit_code, j->error, sizeof j->error);
	if (j->status == ST_ERROR && j->stop == STOP_NONE && wk->rt.kind != RT_EXEC)
		outcome_detail(j->error, sizeof j->error, &j->tail, j->tail_next);	/* e.g. which image is missing */
	if (wk->rt.kind != RT_EXEC && !j->no_container &&
	    (j->container_dirty || j->status == ST_ERROR || !WIFEXITED(j->wstatus))) {
		/* Not the normal path: --rm may not have run.  rm -f always does. */
		sandbox_rm_argv(c, &wk->rt, watch_container(j, cid, sizeof cid), &argv);
		proc_run(argv.v, NULL, NULL);
		strv_free(&argv);
	}
	if (wk->rt.kind != RT_EXEC)
		unlink(j->cidfile);
	log_info("job %s: %s (exit %d) after %.1f s%s%s", j->id, status_name(j->status), j->exit_code,
	    j->finished_at - j->started_at, j->error[0] ? ": " : "", j->error);

	job_release_slot(j);
	if (j->stop == STOP_DRAIN || j->stop == STOP_LEASE) {
		/* Drained: the release at exit puts it back.  Lease lost: not ours. */
		job_done(j);
		return;
	}
	if ((j->status == ST_FAILED || j->status == ST_OOM_KILLED || j->status == ST_TIMED_OUT) &&
	    j->attempt <= j->spec.retries) {
		double d = c->retry_backoff * pow(2, (double)(j->attempt - 1));
		j->retry_due = now_real() + (d > c->retry_backoff_max ? c->retry_backoff_max : d);
	}
	job_set_state(j, JOB_COLLECTING);
	j->collect = collect_start(j->status == ST_CANCELLED ? "" : paths_collect_dir(j), job_collected, j);
}

/* The upload is over: a failure is the job's error; files kept unless all arrived. */
static void
job_uploaded(struct job *j)
{
	const char *err;

	job_timers_stop(j, JOB_T_POLL);
	if (upload_result(j->upload, &err) != 0) {
		j->status = j->stop == STOP_CANCEL ? ST_CANCELLED : ST_ERROR;
		snprintf(j->error, sizeof j->error, "%s; the files are kept on %s", err, wk->host);
	} else if (j->output_owned && !wk->conf->keep_outputs)
		outdir_remove(j->output_path);
	job_finish(j);
}

/* The artifacts are hashed (or could not be): upload them when the job asks, then record the result. */
void
job_collected(struct job *j)
{
	j->status = collect_outcome(j->collect, j->status, j->error, sizeof j->error);
	if (j->status == ST_CANCELLED)
		j->retry_due = 0;	/* a cancel is never retried */
	if (j->status == ST_SUCCEEDED && j->spec.upload_url != NULL && j->retry_due == 0) {
		job_set_state(j, JOB_UPLOADING);
		j->upload = upload_start(j, event_upload, job_uploaded);
		ev_timer_set(&j->cancel_poll, wk->conf->stats_interval, wk->conf->stats_interval);
		ev_timer_start(EV_DEFAULT, &j->cancel_poll);
		return;
	}
	job_finish(j);
}

/* The finish script's verdict. */
static void
job_finished(redisReply *r, void *arg)
{
	struct job *j = arg;

	if (r == NULL)
		return;	/* only at exit */
	if (r->type == REDIS_REPLY_ERROR) {
		/*
		 * Not BUSY & co. (the outbox sends those again until they are
		 * recorded): a lasting error.  The payload is still in our active
		 * list and the hash says running with our lease: the release before
		 * the next fetch puts it back on the queue, so it runs again
		 * rather than staying `running` for ever.
		 */
		log_err("job %s: recording the result failed: %s; putting it back on the queue", j->id, r->str);
		fetch_recover_later();
	} else if (r->type == REDIS_REPLY_STRING && strcmp(r->str, "stale") == 0) {
		wk->m.results_refused++;
		log_warn("job %s: result of attempt %ld refused: another worker holds the job now", j->id,
		    j->attempt);
	} else if (r->type == REDIS_REPLY_STRING && strcmp(r->str, "retry") == 0) {
		log_notice("job %s: will be retried in %.0f s (attempt %ld of %ld)", j->id,
		    j->retry_due - now_real(), j->attempt + 1, j->spec.retries + 1);
	} else {
		wk->m.jobs_by_status[j->status]++;
		if (j->started_mono > 0)
			metrics_duration(j->finished_at - j->started_at);
	}
	job_done(j);
}

/* Send the result (or the retry) in one script with the lease check. */
static void
job_finish(struct job *j)
{
	msgpack_sbuffer res;
	struct event_msg fe, rq;

	/* After the job's last event: its finished event comes after every other. */
	if (event_busy(j)) {
		event_idle(j, job_finish);
		return;
	}
	job_set_state(j, JOB_FINISHING);
	/*
	 * The build is gone and its artifacts are hashed (and uploaded): let go
	 * of its directories before the result can be seen, so a job sent the
	 * moment it is (a rerun, the same output again) does not find them
	 * still held and is not refused as overlapping.
	 */
	paths_release(j);
	msgpack_sbuffer_init(&res);
	event_result(j, &res);
	if (j->retry_due > 0) {
		event_begin(j, &rq, "requeued", 3);
		mp_kv_str(&rq.pk, "reason", "retry");
		mp_kv_double(&rq.pk, "due", j->retry_due);
		mp_str(&rq.pk, "error");
		utf8_pack(&rq.pk, j->error, strlen(j->error));
		msgpack_sbuffer_init(&fe.sb);
	} else {
		event_begin(j, &fe, "finished", 1);
		mp_str(&fe.pk, "result");
		msgpack_sbuffer_write(&fe.sb, res.data, res.size);
		msgpack_sbuffer_init(&rq.sb);
	}
	script_finish(&(struct script_finish) {
	    .id = j->id, .attempt = j->attempt, .payload = j->payload, .payload_len = j->payload_len,
	    .result = res.data, .result_len = res.size, .finished = fe.sb.data, .finished_len = fe.sb.size,
	    .seq = j->seq, .status = status_name(j->status), .exit_code = j->exit_code,
	    .finished_at = j->finished_at, .error = j->error, .retry_due = j->retry_due,
	    .requeued = rq.sb.data, .requeued_len = rq.sb.size,
	}, job_finished, j);
	msgpack_sbuffer_destroy(&res);
	msgpack_sbuffer_destroy(&fe.sb);
	msgpack_sbuffer_destroy(&rq.sb);
}
