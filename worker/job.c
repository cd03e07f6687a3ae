/*
 * job.c: one build, from the payload BLMOVE gave us to its one result.
 *
 *   fetched -> (refused) REFUSING -> DONE
 *           [-> UNPACKING (profile_archive; bad_archive: REFUSING)]
 *           -> CLAIMING -> STARTING -> RUNNING [-> STOPPING] -> COLLECTING
 *              [-> UPLOADING (succeeded, with upload)] -> FINISHING -> DONE
 *
 * The job embeds every watcher it needs (w.data = job).  Invariant: a job
 * is finished only when its child is reaped AND both pipes are at EOF;
 * either can come first.  A job is freed only from DONE, through
 * defer_free(), never inside one of its own callbacks, and never while a
 * Redis command holding it as callback argument is unanswered (the
 * finish or refuse script is always the job's last command).
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <sha1.h>
#include <sha2.h>

#include "worker.h"

extern char **environ;

static void job_spawn(struct job *j);
static void job_end(struct job *j);
static void job_finish(struct job *j);
static void job_stop_asked(struct job *j, enum stop_reason why);

static const char *job_state_names[] = {
	[JOB_CLAIMING] = "claiming", [JOB_STARTING] = "starting", [JOB_RUNNING] = "running",
	[JOB_STOPPING] = "stopping", [JOB_COLLECTING] = "collecting", [JOB_FINISHING] = "finishing",
	[JOB_REFUSING] = "refusing", [JOB_DONE] = "done",
	[JOB_UNPACKING] = "unpacking", [JOB_UPLOADING] = "uploading",
};

/* A state's name for logs. */
const char *
job_state_name(enum job_state s)
{
	return job_state_names[s];
}

/* The one place a job changes state. */
void
job_set_state(struct job *j, enum job_state s)
{
	log_debug("job %s: %s -> %s", j->id[0] ? j->id : "?", job_state_name(j->state), job_state_name(s));
	j->state = s;
}

/* Give the slot back so the fetch can ask for another job. */
static void
job_release_slot(struct job *j)
{
	if (!j->has_slot)
		return;
	j->has_slot = false;
	wk->held--;
	worker_slot_freed();
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

/* The job is over for this worker: forget it. */
static void
job_done(struct job *j)
{
	job_set_state(j, JOB_DONE);
	job_release_slot(j);
	paths_release(j);	/* the output may be someone else's from now on */
	ev_timer_stop(EV_DEFAULT, &j->warn_timer);
	ev_timer_stop(EV_DEFAULT, &j->timeout_timer);
	ev_timer_stop(EV_DEFAULT, &j->stats_timer);
	ev_timer_stop(EV_DEFAULT, &j->cid_timer);
	ev_timer_stop(EV_DEFAULT, &j->kill_timer);
	ev_io_stop(EV_DEFAULT, &j->oom_io);
	ev_child_stop(EV_DEFAULT, &j->child);
	TAILQ_REMOVE(&wk->jobs, j, entry);
	if (j->profile_owned)
		outdir_remove(j->profile_path);	/* the unpacked profile_archive */
	wk->done++;
	if (j->emits == 0)
		defer_free(job_free, j);
	worker_check_exit();
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

/* The dead-letter script answered: the refused job is over. */
void
job_done_refused(struct job *j)
{
	job_done(j);
}

/*
 * Exit status to outcome, in one place.  A stop we asked for wins over the
 * exit code it caused; an OOM kill anywhere in the build wins over the
 * exit code the build chose after it (mkarchiso exits 1).  Container
 * runtimes exit 125 when they fail themselves, 126/127 when the command
 * cannot be run.
 */
enum status
job_outcome(enum rt_kind rt, int wstatus, bool oom, enum stop_reason stop, int *exit_code, char *err,
    size_t errlen)
{
	int code = WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : -1;

	*exit_code = code;
	err[0] = '\0';
	if (stop == STOP_CANCEL) {
		snprintf(err, errlen, "cancelled");
		return ST_CANCELLED;
	}
	if (stop == STOP_TIMEOUT) {
		snprintf(err, errlen, "stopped after its timeout");
		return ST_TIMED_OUT;
	}
	if (stop == STOP_LEASE || stop == STOP_DRAIN) {
		snprintf(err, errlen, stop == STOP_LEASE ? "lease lost" : "stopped by a worker shutdown");
		return ST_ERROR;
	}
	if (oom) {
		snprintf(err, errlen, "the kernel killed a process of the build for memory");
		return ST_OOM_KILLED;
	}
	if (WIFSIGNALED(wstatus)) {
		snprintf(err, errlen, "%s killed by signal %d", rt == RT_EXEC ? "build" : "runtime client",
		    WTERMSIG(wstatus));
		return rt == RT_EXEC ? ST_FAILED : ST_ERROR;
	}
	if (code == 0)
		return ST_SUCCEEDED;
	if (rt != RT_EXEC && code == 125) {
		*exit_code = -1;	/* the runtime's own failure: the build never ran */
		snprintf(err, errlen, "the container runtime failed (exit 125)");
		return ST_ERROR;
	}
	if (code == 126 || code == 127) {
		snprintf(err, errlen, "the build command could not be %s (exit %d)",
		    code == 126 ? "executed" : "found", code);
		return ST_ERROR;
	}
	snprintf(err, errlen, "build exited with code %d", code);
	return ST_FAILED;
}

/*
 * Keep line (valid UTF-8, output.c made it so) in the tail ring; send a
 * phase event when the pattern of a later phase matches.  Phases only go
 * forward in [phases] order: a line of the current phase or of an earlier
 * one is ignored, so a job sends at most nphases phase events whatever
 * the build prints (they are RQ_KEEP: bounded, so never dropped).
 */
void
job_line(struct job *j, struct outstream *os, const char *line, size_t len)
{
	const struct config *c = wk->conf;

	if (j->tail.n > 0) {
		size_t i = j->tail_next++ % j->tail.n;
		free(j->tail.v[i]);
		j->tail.v[i] = xstrndup(line, len);
	}
	for (size_t i = (size_t)(j->phase + 1); i < c->nphases; i++) {
		struct ev_pack ep;
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

/*
 * The container to stop or remove: its id from the cidfile once the
 * runtime wrote it, else its name.  The name is the job's, not the
 * attempt's: after a take-over it may be the new owner's container,
 * which a fenced-off worker must not touch.
 */
static const char *
job_container(const struct job *j, char *buf, size_t len)
{
	ssize_t n;
	int fd;

	if ((fd = open(j->cidfile, O_RDONLY | O_CLOEXEC)) < 0)
		return j->cname;
	n = read(fd, buf, len - 1);
	close(fd);
	if (n < 0)
		return j->cname;
	buf[n] = '\0';
	buf[strcspn(buf, " \r\n")] = '\0';
	return strlen(buf) >= 12 ? buf : j->cname;
}

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
#define JOB_OOM_POLL 0.05	/* seconds between reads of oom_kill without a notification */

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
	ev_timer_stop(EV_DEFAULT, &j->warn_timer);
	ev_timer_stop(EV_DEFAULT, &j->timeout_timer);
	ev_timer_stop(EV_DEFAULT, &j->kill_timer);
	j->kills = 0;
	if (wk->rt.kind == RT_EXEC) {
		kill(-j->pid, SIGTERM);
		ev_timer_set(&j->kill_timer, wk->conf->stop_grace, 0);
	} else {
		j->container_dirty = true;
		sandbox_stop_argv(wk->conf, &wk->rt, job_container(j, cid, sizeof cid), &argv);
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
		sandbox_kill_argv(wk->conf, &wk->rt, job_container(j, cid, sizeof cid), &argv);
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

/* The warning time has come. */
static void
job_warn_cb(EV_P_ ev_timer *w, int revents)
{
	struct job *j = w->data;
	struct ev_pack ep;
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

/* Memory and CPU of an exec-mode child from /proc (the child alone). */
static int
job_proc_stats(pid_t pid, uint64_t *mem, double *cpu)
{
	char path[64], buf[1024], *p;
	unsigned long long ut, st, rss;
	ssize_t n;
	int fd;

	snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
	if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
		return -1;
	n = read(fd, buf, sizeof buf - 1);
	close(fd);
	if (n <= 0 || (p = strrchr(buf, ')')) == NULL)
		return -1;
	buf[n] = '\0';
	/* After "pid (comm)": state is field 3; utime 14, stime 15, rss 24. */
	if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu %*d %*d %*d %*d %*d %*d %*u %*u %llu",
	    &ut, &st, &rss) != 3)
		return -1;
	*cpu = (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
	*mem = rss * (uint64_t)sysconf(_SC_PAGESIZE);
	return 0;
}

/* Read the OOM kill counter; say so the first time it shows a kill. */
static void
job_oom_poll(struct job *j)
{
	if (cgroup_oom_check(&j->cg) && !j->oom) {
		j->oom = true;
		log_notice("job %s: the kernel killed a process of the build for memory", j->id);
	}
}

/* Periodic stats; the emit's answer also tells us about a cancel. */
static void
job_stats_cb(EV_P_ ev_timer *w, int revents)
{
	struct job *j = w->data;
	struct ev_pack ep;
	uint64_t mem = 0;
	double cpu = 0;

	(void)loop;
	(void)revents;
	if (j->cg_found) {
		cgroup_stats(&j->cg, &mem, &cpu);
		job_oom_poll(j);
	} else if (wk->rt.kind == RT_EXEC)
		job_proc_stats(j->pid, &mem, &cpu);
	event_begin(j, &ep, "stats", 3);
	mp_kv_double(&ep.pk, "elapsed", now_mono() - j->started_mono);
	mp_kv_uint(&ep.pk, "memory", mem);
	mp_kv_double(&ep.pk, "cpu", cpu);
	event_send(j, &ep, "stats", RQ_DROP, NULL);
}

/* The memory cgroup says something happened: an OOM kill, or its removal. */
static void
job_oom_cb(EV_P_ ev_io *w, int revents)
{
	struct job *j = w->data;

	(void)revents;
	job_oom_poll(j);
	if (j->reaped)
		ev_io_stop(loop, w);
}

/*
 * Wait for the cidfile the runtime writes when it creates the container,
 * then find its memory cgroup and arm the OOM watch.  The count read when
 * arming catches a kill that came before.
 */
static void
job_cid_cb(EV_P_ ev_timer *w, int revents)
{
	struct job *j = w->data;
	char cid[128];
	ssize_t n;
	int fd, efd;

	(void)revents;
	if (j->reaped) {
		ev_timer_stop(loop, w);
		return;
	}
	if (j->cg_found) {
		/* Polling the counter: no eventfd (no write access to the cgroup). */
		job_oom_poll(j);
		if (cgroup_gone(&j->cg))
			ev_timer_stop(loop, w);
		return;
	}
	if ((fd = open(j->cidfile, O_RDONLY | O_CLOEXEC)) < 0)
		goto again;
	n = read(fd, cid, sizeof cid - 1);
	close(fd);
	if (n < 12)
		goto again;
	cid[n] = '\0';
	cid[strcspn(cid, " \r\n")] = '\0';
	snprintf(j->cid, sizeof j->cid, "%s", cid);	/* our container exists */
	if (cgroup_find(cid, &j->cg) != 0)
		goto again;
	j->cg_found = true;
	ev_timer_stop(loop, w);
	if ((efd = cgroup_watch_oom(&j->cg)) >= 0) {
		ev_io_init(&j->oom_io, job_oom_cb, efd, EV_READ);
		j->oom_io.data = j;
		ev_io_start(loop, &j->oom_io);
	} else {
		/*
		 * Registering an eventfd needs write access to the cgroup (a
		 * worker that runs the runtime through sudo has none): read the
		 * world-readable counter every JOB_OOM_POLL while the container
		 * lives instead, as well as at each stats tick and at the end.
		 */
		log_debug("job %s: no OOM notification from %s; polling its oom_kill counter", j->id,
		    j->cg.mem_dir);
		w->repeat = JOB_OOM_POLL;
		ev_timer_again(loop, w);
	}
	job_oom_poll(j);
	log_debug("job %s: container %.12s, cgroup %s", j->id, cid, j->cg.mem_dir);
	return;
again:
	/* Poll fast at first (the container appears within a second), then slower. */
	w->repeat = now_mono() - j->started_mono < 2 ? 0.02 : 0.25;
	ev_timer_again(loop, w);
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

/* One of the pipes reached EOF. */
void
job_pipe_closed(struct job *j)
{
	if (j->reaped && j->out.eof && j->err.eof)
		job_end(j);
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

/* Someone asked to cancel the running (or collecting) job. */
void
job_cancel_seen(struct job *j)
{
	if (j->state == JOB_COLLECTING && j->collect != NULL) {
		log_notice("job %s: cancelled; stopping the collection of its artifacts", j->id);
		collect_cancel(j->collect);
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
static void
job_stop_asked(struct job *j, enum stop_reason why)
{
	if (j->state == JOB_STARTING && j->conflict_retried) {
		if (j->stop == STOP_NONE)
			j->stop = why;
		return;
	}
	job_stop(j, why);
}

/*
 * Whether the conflict check ends here: a stop was asked (or the worker
 * is stopping) while it ran.  The job then ends with the stop's outcome;
 * the build never ran, so its exit code is -1 (recorded as a kill).
 */
static bool
job_conflict_stopped(struct job *j)
{
	if (j->stop == STOP_NONE && wk->stopping)
		j->stop = STOP_DRAIN;
	if (j->stop == STOP_NONE)
		return false;
	log_info("job %s: stopped before it could start again", j->id);
	j->wstatus = SIGKILL;	/* WIFSIGNALED: exit code -1 */
	j->no_container = true;	/* the name is not ours: never rm -f it */
	job_end(j);
	return true;
}

/* The container holding our name is removed: start the build once more. */
static void
job_conflict_removed(int wstatus, const char *out, size_t len, void *arg)
{
	struct job *j = arg;

	(void)wstatus;
	(void)out;
	(void)len;
	if (job_conflict_stopped(j))
		return;
	j->reaped = false;
	j->oom = false;
	cgroup_close(&j->cg);
	j->cg_found = false;
	output_close(&j->out);
	output_close(&j->err);
	job_spawn(j);
	if (j->state == JOB_STARTING)
		job_set_state(j, JOB_RUNNING);
}

/*
 * The runtime's answer about the container that has our name.  The
 * runtime exited 125 (it failed itself, or the build did): only when a
 * container of that name exists and is not ours (our container was never
 * created, or has another id) was the name taken.  The build's output
 * plays no part, so a build cannot make us run it twice.
 */
static void
job_conflict_inspected(int wstatus, const char *out, size_t len, void *arg)
{
	struct job *j = arg;
	struct strv argv = { 0 };
	char id[80];
	size_t n = strcspn(out, " \r\n");
	bool ours;

	if (job_conflict_stopped(j))
		return;
	snprintf(id, sizeof id, "%.*s", (int)(n < len ? n : len), out);
	ours = j->cid[0] != '\0' && (strncmp(id, j->cid, strlen(id)) == 0 ||
	    strncmp(id, j->cid, strlen(j->cid)) == 0);
	if (!WIFEXITED(wstatus) || WEXITSTATUS(wstatus) != 0 || strlen(id) < 12 ||
	    strspn(id, "0123456789abcdef") != strlen(id) || ours) {
		/* No conflict: the outcome is the exit 125.  No container has our name: none to rm. */
		if (WIFEXITED(wstatus) && WEXITSTATUS(wstatus) != 0 && j->cid[0] == '\0')
			j->no_container = true;
		job_end(j);
		return;
	}
	log_notice("job %s: container name %s is taken by an orphan (%.12s); removing it", j->id, j->cname, id);
	sandbox_rm_argv(wk->conf, &wk->rt, id, &argv);
	proc_run(argv.v, job_conflict_removed, j);
	strv_free(&argv);
}

/* The upload is over: a failure is the job's error; files kept unless all arrived. */
static void
job_uploaded(struct job *j)
{
	const char *err;

	if (upload_result(j->upload, &err) != 0) {
		j->status = ST_ERROR;
		snprintf(j->error, sizeof j->error, "%s; the files are kept on %s", err, wk->host);
	} else if (j->output_owned && !wk->conf->keep_outputs)
		outdir_remove(j->output_path);
	job_finish(j);
}

/* The artifacts are hashed (or could not be): upload them when the job asks, then record the result. */
static void
job_collected(struct job *j)
{
	j->status = collect_outcome(j->collect, j->status, j->error, sizeof j->error);
	if (j->status == ST_CANCELLED)
		j->retry_due = 0;	/* a cancel is never retried */
	if (j->status == ST_SUCCEEDED && j->spec.upload_url != NULL && j->retry_due == 0) {
		job_set_state(j, JOB_UPLOADING);
		j->upload = upload_start(j, job_uploaded);
		return;
	}
	job_finish(j);
}

/* Append the runtime's own complaint (its last "Error" line in the tail) to the error. */
static void
job_error_detail(struct job *j)
{
	size_t len = strlen(j->error);

	for (size_t k = 1; k <= j->tail.n && k <= j->tail_next; k++) {
		const char *line = j->tail.v[(j->tail_next - k) % j->tail.n];
		if (line != NULL && strstr(line, "Error") != NULL && len + 3 < sizeof j->error) {
			/* Tail lines are valid UTF-8: cut this one on a character boundary. */
			size_t room = sizeof j->error - len - 3;
			snprintf(j->error + len, sizeof j->error - len, ": %.*s",
			    (int)utf8_cut(line, strlen(line), room, false), line);
			return;
		}
	}
}

/* Child reaped and pipes at EOF: decide the outcome, clean up, collect. */
static void
job_end(struct job *j)
{
	const struct config *c = wk->conf;
	struct strv argv = { 0 };
	char cid[128];

	ev_timer_stop(EV_DEFAULT, &j->cid_timer);
	ev_timer_stop(EV_DEFAULT, &j->kill_timer);
	if (j->cg_found && cgroup_oom_check(&j->cg))
		j->oom = true;
	ev_io_stop(EV_DEFAULT, &j->oom_io);

	if (wk->rt.kind != RT_EXEC && j->stop == STOP_NONE && !j->conflict_retried &&
	    WIFEXITED(j->wstatus) && WEXITSTATUS(j->wstatus) == 125) {
		/*
		 * The runtime failed: perhaps a container of an earlier attempt
		 * still has our name.  Ask the runtime (job_conflict_inspected);
		 * meanwhile there is no child and a stop is only noted.  The
		 * warning, timeout and stats timers keep running: they cover the
		 * job from its first start, across the retry.
		 */
		if (j->cid[0] == '\0' && job_container(j, cid, sizeof cid) == cid)
			snprintf(j->cid, sizeof j->cid, "%s", cid);
		j->conflict_retried = true;
		job_set_state(j, JOB_STARTING);
		sandbox_inspect_id_argv(c, &wk->rt, j->cname, &argv);
		proc_run(argv.v, job_conflict_inspected, j);
		strv_free(&argv);
		return;
	}
	ev_timer_stop(EV_DEFAULT, &j->warn_timer);
	ev_timer_stop(EV_DEFAULT, &j->timeout_timer);
	ev_timer_stop(EV_DEFAULT, &j->stats_timer);

	j->finished_at = now_real();
	j->status = job_outcome(wk->rt.kind, j->wstatus, j->oom, j->stop, &j->exit_code, j->error,
	    sizeof j->error);
	if (j->status == ST_OOM_KILLED) {
		char b[32];
		snprintf(j->error, sizeof j->error, "the kernel killed a process of the build for memory "
		    "(limit %s)", fmt_bytes(j->spec.memory, b, sizeof b));
	} else if (j->status == ST_TIMED_OUT)
		snprintf(j->error, sizeof j->error, "stopped after its timeout of %g s", j->spec.timeout);
	else if (j->status == ST_ERROR && j->stop == STOP_NONE && wk->rt.kind != RT_EXEC)
		job_error_detail(j);	/* e.g. which image is missing */
	if (wk->rt.kind != RT_EXEC && !j->no_container &&
	    (j->container_dirty || j->status == ST_ERROR || !WIFEXITED(j->wstatus))) {
		/* Not the normal path: --rm may not have run.  rm -f always does. */
		sandbox_rm_argv(c, &wk->rt, job_container(j, cid, sizeof cid), &argv);
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
	char k[9][KEY_MAX], att[24], seq[24], code[24], fin[32], ttl[24], maxlen[24], due[32];
	const char *args[24];
	size_t lens[24];
	msgpack_sbuffer res;
	struct ev_pack fe, rq;
	int n = 0;

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
	keys_id(&wk->keys, "job", j->id, k[0], KEY_MAX);
	keys_id(&wk->keys, "active", wk->id, k[1], KEY_MAX);
	keys_id(&wk->keys, "result", j->id, k[3], KEY_MAX);
	keys_id(&wk->keys, "progress", j->id, k[4], KEY_MAX);
	keys_id(&wk->keys, "log", j->id, k[6], KEY_MAX);
	args[n++] = k[0];
	args[n++] = k[1];
	args[n++] = wk->keys.results;
	args[n++] = k[3];
	args[n++] = k[4];
	args[n++] = wk->keys.events;
	args[n++] = k[6];
	args[n++] = wk->keys.cancel;
	args[n++] = wk->keys.delayed;
	snprintf(att, sizeof att, "%ld", j->attempt);
	snprintf(seq, sizeof seq, "%llu", (unsigned long long)j->seq);
	snprintf(code, sizeof code, "%d", j->exit_code);
	snprintf(fin, sizeof fin, "%.6f", j->finished_at);
	snprintf(ttl, sizeof ttl, "%ld", wk->conf->result_ttl);
	snprintf(maxlen, sizeof maxlen, "%ld", wk->conf->log_maxlen);
	snprintf(due, sizeof due, "%.3f", j->retry_due);
	args[n++] = wk->id;
	args[n++] = att;
	args[n++] = j->payload;
	args[n++] = res.data;
	args[n++] = fe.sb.data ? fe.sb.data : "";
	args[n++] = seq;
	args[n++] = status_name(j->status);
	args[n++] = code;
	args[n++] = fin;
	args[n++] = j->error;
	args[n++] = ttl;
	args[n++] = maxlen;
	args[n++] = j->id;
	args[n++] = j->retry_due > 0 ? due : "0";
	args[n++] = rq.sb.data ? rq.sb.data : "";
	for (int i = 0; i < n; i++) {
		if (i != 11 && i != 12 && i != 13 && i != 23)	/* binary ones below */
			lens[i] = strlen(args[i]);
	}
	lens[11] = j->payload_len;
	lens[12] = res.size;
	lens[13] = fe.sb.size;
	lens[23] = rq.sb.size;
	script_call(wk->cmd, SCRIPT_FINISH, RQ_KEEP, job_finished, j, 9, n, args, lens);
	msgpack_sbuffer_destroy(&res);
	msgpack_sbuffer_destroy(&fe.sb);
	msgpack_sbuffer_destroy(&rq.sb);
}

/* Start the child: container run, or the command itself in exec mode. */
static void
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
		j->finished_at = now_real();
		j->status = ST_ERROR;
		j->exit_code = -1;
		snprintf(j->error, sizeof j->error, "%s", err);
		job_release_slot(j);
		job_set_state(j, JOB_COLLECTING);
		j->collect = collect_start("", job_collected, j);
		return;
	}
	output_init(&j->out, j, "stdout", ofd);
	output_init(&j->err, j, "stderr", efd);
	output_start(&j->out);
	output_start(&j->err);
	ev_child_init(&j->child, job_child_cb, j->pid, 0);
	j->child.data = j;
	ev_child_start(EV_DEFAULT, &j->child);
	if (wk->rt.kind != RT_EXEC) {
		ev_timer_init(&j->cid_timer, job_cid_cb, 0.02, 0.02);
		j->cid_timer.data = j;
		ev_timer_start(EV_DEFAULT, &j->cid_timer);
	}
}

/* No output in the job: make builds_root/jobs/<id>/<attempt>/; false (and an error result) if we cannot. */
static bool
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
	j->finished_at = now_real();
	j->status = ST_ERROR;
	j->exit_code = -1;
	snprintf(j->error, sizeof j->error, "output: %s", err);
	job_release_slot(j);
	job_set_state(j, JOB_COLLECTING);
	j->collect = collect_start("", job_collected, j);
	return false;
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
		fetch_refuse(j, REFUSE_CLAIM, msg);
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
		j->status = ST_CANCELLED;
		j->exit_code = -1;
		snprintf(j->error, sizeof j->error, "cancelled before it started");
		job_release_slot(j);
		job_set_state(j, JOB_COLLECTING);
		j->collect = collect_start("", job_collected, j);
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
	if (j->spec.warning > 0 && j->spec.warning < j->spec.timeout) {
		ev_timer_set(&j->warn_timer, j->spec.warning, 0);
		ev_timer_start(EV_DEFAULT, &j->warn_timer);
	}
	ev_timer_set(&j->timeout_timer, j->spec.timeout, 0);
	ev_timer_start(EV_DEFAULT, &j->timeout_timer);
	ev_timer_set(&j->stats_timer, wk->conf->stats_interval, wk->conf->stats_interval);
	ev_timer_start(EV_DEFAULT, &j->stats_timer);
}

/* Send the claim script. */
static void
job_claim(struct job *j)
{
	const struct config *c = wk->conf;
	char seqoff[24], attoff[24], maxlen[24], deadmax[24];
	char kjob[KEY_MAX], kact[KEY_MAX], klog[KEY_MAX], kprog[KEY_MAX], now[32];
	const char *args[15];
	size_t lens[15], so, ao;
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
	snprintf(now, sizeof now, "%.6f", now_real());
	snprintf(seqoff, sizeof seqoff, "%zu", so);
	snprintf(attoff, sizeof attoff, "%zu", ao);
	snprintf(maxlen, sizeof maxlen, "%ld", c->log_maxlen);
	snprintf(deadmax, sizeof deadmax, "%ld", c->dead_maxlen);
	args[0] = keys_id(&wk->keys, "job", j->id, kjob, sizeof kjob);
	args[1] = keys_id(&wk->keys, "active", wk->id, kact, sizeof kact);
	args[2] = wk->keys.cancel;
	args[3] = keys_id(&wk->keys, "log", j->id, klog, sizeof klog);
	args[4] = keys_id(&wk->keys, "progress", j->id, kprog, sizeof kprog);
	args[5] = wk->keys.events;
	args[6] = wk->id;
	args[7] = j->payload;
	args[8] = now;
	args[9] = j->id;
	args[10] = started.data;
	args[11] = seqoff;
	args[12] = attoff;
	args[13] = maxlen;
	args[14] = deadmax;
	for (int i = 0; i < 15; i++)
		lens[i] = i == 7 ? j->payload_len : i == 10 ? started.size : strlen(args[i]);
	script_call(wk->cmd, SCRIPT_CLAIM, RQ_KEEP, job_claimed, j, 6, 15, args, lens);
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
		fetch_refuse(j, REFUSE_ARCHIVE, msg);
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
		fetch_refuse(j, REFUSE_ARCHIVE, msg);
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
	j->phase = -1;
	j->exit_code = -1;
	j->has_slot = true;
	wk->held++;
	TAILQ_INSERT_TAIL(&wk->jobs, j, entry);
	ev_timer_init(&j->warn_timer, job_warn_cb, 0, 0);
	ev_timer_init(&j->timeout_timer, job_timeout_cb, 0, 0);
	ev_timer_init(&j->stats_timer, job_stats_cb, 0, 0);
	ev_timer_init(&j->kill_timer, job_kill_cb, 0, 0);
	j->warn_timer.data = j->timeout_timer.data = j->stats_timer.data = j->kill_timer.data = j;
	output_init(&j->out, j, "stdout", -1);
	output_init(&j->err, j, "stderr", -1);
	j->cg.event_fd = j->cg.watch_fd = -1;
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
		fetch_refuse(j, r, err);
		return;
	}
	if (j->spec.profile_archive != NULL) {
		job_unpack(j);
		return;
	}
	job_claim(j);
}

