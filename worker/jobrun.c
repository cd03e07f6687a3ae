/*
 * jobrun.c: a job's child, the runtime client (or the build itself in
 * exec mode): starting it, its output lines and phases, the warning and
 * the timeout, and stopping it in stages.  Its end goes to job_end()
 * (jobend.c) once the child is reaped and both pipes are at EOF.
 */
#include <signal.h>
#include <string.h>
#include <unistd.h>

#include "job.h"

extern char **environ;

static void job_warn_cb(EV_P_ ev_timer *w, int revents);
static void job_timeout_cb(EV_P_ ev_timer *w, int revents);
static void job_kill_cb(EV_P_ ev_timer *w, int revents);
static void job_line(struct job *j, struct outstream *os, const char *line, size_t len);
static void job_pipe_closed(struct job *j);

/*
 * Stopping, in stages, each only while the child is not reaped (kill_timer
 * drives them; j->kills counts the stages done):
 *
 *   0  the runtime's "stop --time=GRACE ID" (exec: SIGTERM to the group)
 *   1  GRACE + JOB_KILL_AFTER later: the runtime's "kill ID", and SIGTERM to
 *      the client (exec: SIGKILL to the group).  Signals to the client
 *      alone never suffice under sudo: sudo relays TERM, INT, HUP to the
 *      runtime it runs as root, but SIGKILL kills sudo and leaves the
 *      runtime running.
 *   2  JOB_KILL_LAST later: SIGKILL to the client's process group.
 *
 * The helper calls have deadlines of their own (proc_run_timeout), so a
 * runtime that hangs cannot hold a stage up.  What is left once the
 * client is reaped, a runtime keeping our pipes open, is the EOF deadline's
 * business (job_child_cb).
 */
#define JOB_KILL_AFTER 10.0
#define JOB_KILL_LAST 5.0
#define JOB_HELPER_TIMEOUT 15.0
#define JOB_EOF_GRACE 3.0


/* A fetched job's timers and (closed) streams, before anything runs. */
void
job_run_init(struct job *j)
{
	ev_timer_init(&j->warn_timer, job_warn_cb, 0, 0);
	ev_timer_init(&j->timeout_timer, job_timeout_cb, 0, 0);
	ev_timer_init(&j->kill_timer, job_kill_cb, 0, 0);
	ev_timer_init(&j->cancel_poll, job_cancel_poll_cb, 0, 0);
	j->warn_timer.data = j->timeout_timer.data = j->kill_timer.data = j->cancel_poll.data = j;
	output_init(&j->out, j, "stdout", -1, job_line, job_pipe_closed);
	output_init(&j->err, j, "stderr", -1, job_line, job_pipe_closed);
}

/*
 * Keep line (valid UTF-8, output.c made it so) in the tail ring; send a
 * phase event when the pattern of a later phase matches.  Phases only go
 * forward in [phases] order: a line of the current phase or of an earlier
 * one is ignored, so a job sends at most nphases phase events whatever
 * the build prints (they are RQ_KEEP: bounded, so never dropped).
 */
static void
job_line(struct job *j, struct outstream *os, const char *line, size_t len)
{
	const struct config *c = wk->conf;

	if (j->tail.n > 0) {
		size_t i = j->tail_next++ % j->tail.n;
		free(j->tail.v[i]);
		j->tail.v[i] = xstrndup(line, len);
	}
	for (size_t i = (size_t)(j->phase + 1); i < c->nphases; i++) {
		struct event_msg ep;
		if (memmem(line, len, c->phases[i].pattern, strlen(c->phases[i].pattern)) == NULL)
			continue;
		j->phase = (int)i;
		output_flush(os);	/* lines before the phase change go first */
		event_begin(j, &ep, "phase", 2);
		mp_str(&ep.pk, "name");
		utf8_pack(&ep.pk, c->phases[i].name, strlen(c->phases[i].name));
		mp_str(&ep.pk, "line");
		utf8_pack(&ep.pk, line, utf8_cut(line, len, 512, false));
		event_send(j, &ep, "phase", RQ_KEEP, c->phases[i].name);
		break;
	}
}

/* One of the pipes reached EOF. */
static void
job_pipe_closed(struct job *j)
{
	if (j->reaped && j->out.eof && j->err.eof)
		job_end(j);
}

/* The child (the runtime client, or the build in exec mode) exited. */
static void
job_child_cb(EV_P_ ev_child *w, int revents)
{
	struct job *j = w->data;

	(void)revents;
	ev_child_stop(loop, w);
	j->reaped = true;
	j->wstatus = w->rstatus;
	if (j->out.eof && j->err.eof) {
		job_end(j);
		return;
	}
	/* EOF normally follows at once; past JOB_EOF_GRACE, job_kill_cb ends the wait. */
	ev_timer_stop(loop, &j->kill_timer);
	ev_timer_set(&j->kill_timer, JOB_EOF_GRACE, 0);
	ev_timer_start(loop, &j->kill_timer);
}

/* No output in the job: make builds_root/jobs/<id>/<attempt>/; false (and an error result) if we cannot. */
bool
job_own_output(struct job *j)
{
	char leaf[24], err[ERR_MAX];
	int fd;

	snprintf(leaf, sizeof leaf, "%ld", j->attempt);
	if (outdir_make(j->id, leaf, j->output_path, sizeof j->output_path, &fd, err, sizeof err) == 0) {
		int rc = paths_adopt(j, true, fd, err, sizeof err);
		close(fd);
		j->output_owned = true;
		if (rc == 0)
			return true;
	}
	log_err("job %s: output: %s", j->id, err);
	job_end_early(j, ST_ERROR, "output: %s", err);
	return false;
}

/* Start the child: container run, or the command itself in exec mode. */
void
job_spawn(struct job *j)
{
	const struct config *c = wk->conf;
	struct sandbox_spec s = {
		.ns = c->namespace, .job_id = j->id, .worker_id = wk->id, .attempt = j->attempt,
		.expires = (long long)(now_real() + j->spec.timeout + c->stop_grace + 60),
		.profile = j->profile_path, .output = j->output_path, .cidfile = j->cidfile,
		.epoch = j->spec.source_date_epoch, .memory = j->spec.memory, .cpus = j->spec.cpus,
		.pids = c->pids_limit, .image = j->spec.image,
	};
	struct strv argv = { 0 }, env = { 0 };
	int ofd = -1, efd = -1;
	char err[ERR_MAX];

	if (paths_stage(j, &s, err, sizeof err) != 0)
		goto failed;	/* argv and env are still empty */
	sandbox_argv(c, &wk->rt, &s, &argv);
	if (wk->rt.kind == RT_EXEC)
		sandbox_env(c, &s, environ, &env);
	else
		unlink(j->cidfile);	/* the runtime refuses to overwrite one */
	j->pid = spawn(argv.v, env.n ? env.v : NULL, &ofd, &efd, err, sizeof err);
	strv_free(&argv);
	strv_free(&env);
	if (j->pid < 0) {
failed:
		log_err("job %s: %s", j->id, err);
		job_end_early(j, ST_ERROR, "%s", err);
		return;
	}
	output_init(&j->out, j, "stdout", ofd, job_line, job_pipe_closed);
	output_init(&j->err, j, "stderr", efd, job_line, job_pipe_closed);
	output_start(&j->out);
	output_start(&j->err);
	ev_child_init(&j->child, job_child_cb, j->pid, 0);
	j->child.data = j;
	ev_child_start(EV_DEFAULT, &j->child);
	watch_start(j);
}

/* The build runs: its warning, its timeout and the stats (all of them cover a conflict's second run too). */
void
job_run_timers(struct job *j)
{
	if (j->spec.warning > 0 && j->spec.warning < j->spec.timeout) {
		ev_timer_set(&j->warn_timer, j->spec.warning, 0);
		ev_timer_start(EV_DEFAULT, &j->warn_timer);
	}
	ev_timer_set(&j->timeout_timer, j->spec.timeout, 0);
	ev_timer_start(EV_DEFAULT, &j->timeout_timer);
	watch_stats_start(j);
}

/* The warning time has come. */
static void
job_warn_cb(EV_P_ ev_timer *w, int revents)
{
	struct job *j = w->data;
	struct event_msg ep;
	char msg[160];
	double el = now_mono() - j->started_mono;

	(void)loop;
	(void)revents;
	snprintf(msg, sizeof msg, "build has run %.0f s; it will be stopped at %.0f s", el, j->spec.timeout);
	event_begin(j, &ep, "warning", 3);
	mp_kv_double(&ep.pk, "elapsed", el);
	mp_kv_double(&ep.pk, "timeout", j->spec.timeout);
	mp_kv_str(&ep.pk, "message", msg);
	event_send(j, &ep, "warning", RQ_KEEP, NULL);
	log_notice("job %s: %s", j->id, msg);
}

/* The timeout has come. */
static void
job_timeout_cb(EV_P_ ev_timer *w, int revents)
{
	struct job *j = w->data;

	(void)loop;
	(void)revents;
	log_notice("job %s: timed out after %g s; stopping it", j->id, j->spec.timeout);
	job_stop_asked(j, STOP_TIMEOUT);
}

/* An upload abandoned by the shutdown: the job is over here (job_stop). */
static void
job_abandoned_cb(EV_P_ ev_timer *w, int revents)
{
	(void)loop;
	(void)revents;
	job_done(w->data);
}

/* Stop the build (the runtime's stop: TERM, grace, KILL, or signals), or abandon its upload. */
void
job_stop(struct job *j, enum stop_reason why)
{
	struct strv argv = { 0 };
	char cid[128];

	if (j->state == JOB_UPLOADING && why == STOP_DRAIN && j->upload != NULL) {
		/*
		 * A shutdown that cannot wait for the upload: abandon it (not
		 * from a curl callback: freed now, so none comes later); the
		 * release at exit puts the job back on the queue.
		 */
		log_notice("job %s: upload abandoned by the shutdown; the job goes back on the queue", j->id);
		upload_free(j->upload);
		j->upload = NULL;
		j->stop = why;
		/* job_stop() never removes a job from the list: job_done() comes from a timer. */
		ev_timer_init(&j->kill_timer, job_abandoned_cb, 0, 0);
		j->kill_timer.data = j;
		ev_timer_start(EV_DEFAULT, &j->kill_timer);
		return;
	}
	if (j->state != JOB_RUNNING)
		return;
	j->stop = why;
	job_set_state(j, JOB_STOPPING);
	job_timers_stop(j, JOB_T_LIMITS | JOB_T_KILL);
	j->kills = 0;
	if (wk->rt.kind == RT_EXEC) {
		kill(-j->pid, SIGTERM);
		ev_timer_set(&j->kill_timer, wk->conf->stop_grace, 0);
	} else {
		j->container_dirty = true;
		sandbox_stop_argv(wk->conf, &wk->rt, watch_container(j, cid, sizeof cid), &argv);
		proc_run_timeout(argv.v, wk->conf->stop_grace + JOB_HELPER_TIMEOUT, NULL, NULL);
		strv_free(&argv);
		ev_timer_set(&j->kill_timer, wk->conf->stop_grace + JOB_KILL_AFTER, 0);
	}
	ev_timer_start(EV_DEFAULT, &j->kill_timer);
}

/*
 * The child was reaped JOB_EOF_GRACE ago and a pipe is still open: a
 * process it left behind holds it (a runtime orphaned by a killed sudo, a
 * daemon of an exec-mode build).  Take what is there and end the job.
 */
static void
job_eof_deadline(struct job *j)
{
	log_warn("job %s: its %s still open %g s after the %s exited (a process left behind holds "
	    "them); closing them", j->id, !j->out.eof && !j->err.eof ? "stdout and stderr are" :
	    !j->out.eof ? "stdout is" : "stderr is", JOB_EOF_GRACE,
	    wk->rt.kind == RT_EXEC ? "build" : "runtime client");
	output_abandon(&j->out);
	output_abandon(&j->err);
	job_end(j);
}

/* The next stage of a stop, or the EOF deadline once the child is reaped. */
static void
job_kill_cb(EV_P_ ev_timer *w, int revents)
{
	struct job *j = w->data;
	struct strv argv = { 0 };
	char cid[128];

	(void)loop;
	(void)revents;
	if (j->reaped) {
		if (!j->out.eof || !j->err.eof)
			job_eof_deadline(j);
		return;
	}
	j->kills++;
	if (wk->rt.kind == RT_EXEC) {
		log_warn("job %s: still running %g s after the stop; killing it", j->id, wk->conf->stop_grace);
		kill(-j->pid, SIGKILL);
		return;
	}
	if (j->kills == 1) {
		log_warn("job %s: still running %g s after the stop; killing the container", j->id,
		    wk->conf->stop_grace + JOB_KILL_AFTER);
		sandbox_kill_argv(wk->conf, &wk->rt, watch_container(j, cid, sizeof cid), &argv);
		proc_run_timeout(argv.v, JOB_HELPER_TIMEOUT, NULL, NULL);
		strv_free(&argv);
		kill(j->pid, SIGTERM);	/* sudo relays it; a bare client may exit on it */
		ev_timer_set(w, JOB_KILL_LAST, 0);
		ev_timer_start(EV_DEFAULT, w);
		return;
	}
	log_warn("job %s: the runtime client (pid %d) outlived the container kill; killing it%s", j->id,
	    (int)j->pid, wk->rt.sudo ? " (sudo: the runtime it runs may stay; rm -f follows)" : "");
	kill(-j->pid, SIGKILL);
}

/*
 * Another worker holds the job now: stop, record nothing.  Once the build
 * is over the finish script's verdict decides (an event replayed after a
 * lost reply finds the job already finished by our own result).
 */
void
job_lease_lost(struct job *j)
{
	if (j->lease_lost || j->state == JOB_COLLECTING || j->state == JOB_FINISHING ||
	    j->state == JOB_UPLOADING || j->state == JOB_DONE)
		return;	/* over: an event sent again after our result finds the job final */
	j->lease_lost = true;
	wk->m.results_refused++;
	log_warn("job %s: attempt %ld lost its lease (another worker took the job over); stopping it",
	    j->id, j->attempt);
	if (j->state == JOB_RUNNING || j->state == JOB_STARTING)
		job_stop_asked(j, STOP_LEASE);
}

/* HEXISTS's answer to the upload's cancel poll; the command held the job. */
static void
job_cancel_polled(redisReply *r, void *arg)
{
	struct job *j = arg;

	if (r != NULL && r->type == REDIS_REPLY_INTEGER && r->integer == 1)
		job_cancel_seen(j);
	job_emit_answered(j);
}

/*
 * While the artifacts upload no event is due (a stalled transfer, a
 * retry's backoff): ask Redis every stats_interval whether the job was
 * cancelled, as the stats events do while it runs.  The command holds
 * the job like an event does (j->emits).
 */
void
job_cancel_poll_cb(EV_P_ ev_timer *w, int revents)
{
	struct job *j = w->data;
	const char *argv[3] = { "HEXISTS", wk->keys.cancel, j->id };

	(void)loop;
	(void)revents;
	j->emits++;
	rconn_send(wk->cmd, RQ_ONCE, job_cancel_polled, j, 3, argv, NULL);
}

/* Someone asked to cancel the running, collecting or uploading job. */
void
job_cancel_seen(struct job *j)
{
	if (j->state == JOB_COLLECTING && j->collect != NULL) {
		log_notice("job %s: cancelled; stopping the collection of its artifacts", j->id);
		collect_cancel(j->collect);
		return;
	}
	if (j->state == JOB_UPLOADING && j->upload != NULL) {
		if (j->stop == STOP_NONE) {
			log_notice("job %s: cancelled; stopping the upload of its artifacts", j->id);
			j->stop = STOP_CANCEL;
			upload_cancel(j->upload);	/* its done() comes from the loop */
		}
		return;
	}
	if (j->state != JOB_RUNNING && !(j->state == JOB_STARTING && j->conflict_retried))
		return;
	log_notice("job %s: cancelled; stopping it", j->id);
	job_stop_asked(j, STOP_CANCEL);
}

/*
 * Stop the build.  Between a name conflict's first run and its second
 * (inspect, rm) there is no child and the state is STARTING: the reason
 * is only noted, and the job then ends with it instead of starting again.
 */
void
job_stop_asked(struct job *j, enum stop_reason why)
{
	if (j->state == JOB_STARTING && j->conflict_retried) {
		if (j->stop == STOP_NONE)
			j->stop = why;
		return;
	}
	job_stop(j, why);
}
