/*
 * conflict.c: the runtime exited 125 on a job's first run, perhaps because
 * a container of an earlier attempt still has the job's name.  The
 * runtime is asked who holds the name; an orphan is removed and the
 * build started once more.  Meanwhile the job is STARTING with no child,
 * and a stop is only noted (job_stop_asked): the job then ends with it.
 */
#include <signal.h>
#include <string.h>
#include <sys/wait.h>

#include "job.h"

static void job_conflict_inspected(int wstatus, const char *out, size_t len, void *arg);

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
	watch_reset(j);
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
	struct strv argv = { 0 }, f = { 0 };
	char id[80], line[512];
	size_t n;
	bool ours;

	if (job_conflict_stopped(j))
		return;
	/* "<id> <debate.ns> <debate.job>" */
	n = strcspn(out, "\r\n");
	snprintf(line, sizeof line, "%.*s", (int)(n < len ? n : len), out);
	strv_split(&f, line, " ");
	snprintf(id, sizeof id, "%s", f.n > 0 ? f.v[0] : "");
	ours = j->cid[0] != '\0' && (strncmp(id, j->cid, strlen(id)) == 0 ||
	    strncmp(id, j->cid, strlen(j->cid)) == 0);
	if (!WIFEXITED(wstatus) || WEXITSTATUS(wstatus) != 0 || strlen(id) < 12 ||
	    strspn(id, "0123456789abcdef") != strlen(id) || ours) {
		/* No conflict: the outcome is the exit 125.  No container has our name: none to rm. */
		if (WIFEXITED(wstatus) && WEXITSTATUS(wstatus) != 0 && j->cid[0] == '\0')
			j->no_container = true;
		strv_free(&f);
		job_end(j);
		return;
	}
	/*
	 * Only an orphan of this very job (its namespace and id labels) is
	 * removed.  Whatever else has the name (another namespace's build, a
	 * container that is not the worker's) is left alone: the job ends
	 * with the runtime's exit 125.
	 */
	if (f.n != 3 || strcmp(f.v[1], wk->conf->namespace) != 0 || strcmp(f.v[2], j->id) != 0) {
		char shown[256];

		str_printable(shown, sizeof shown, f.n == 3 ? line + strlen(f.v[0]) + 1 : "(no labels)");
		log_warn("job %s: container name %s is held by %.12s, which is not this job's (debate.ns, "
		    "debate.job: %s); left alone", j->id, j->cname, id, shown);
		j->no_container = true;	/* the name is not ours: never rm -f it */
		strv_free(&f);
		job_end(j);
		return;
	}
	strv_free(&f);
	log_notice("job %s: container name %s is taken by an orphan (%.12s); removing it", j->id, j->cname, id);
	sandbox_rm_argv(wk->conf, &wk->rt, id, &argv);
	proc_run(argv.v, job_conflict_removed, j);
	strv_free(&argv);
}

/*
 * The child is gone: when the runtime failed (exit 125) on the job's
 * first run and no stop was asked, ask the runtime who has our name
 * (job_conflict_inspected) and return true; job_end() then waits.  The
 * warning, timeout and stats timers keep running: they cover the job
 * from its first start, across the retry.
 */
bool
job_conflict_begin(struct job *j)
{
	struct strv argv = { 0 };
	char cid[128];

	if (wk->rt.kind == RT_EXEC || j->stop != STOP_NONE || j->conflict_retried ||
	    !WIFEXITED(j->wstatus) || WEXITSTATUS(j->wstatus) != 125)
		return false;
	if (j->cid[0] == '\0' && watch_container(j, cid, sizeof cid) == cid)
		snprintf(j->cid, sizeof j->cid, "%s", cid);
	j->conflict_retried = true;
	job_set_state(j, JOB_STARTING);
	sandbox_inspect_id_argv(wk->conf, &wk->rt, j->cname, &argv);
	proc_run(argv.v, job_conflict_inspected, j);
	strv_free(&argv);
	return true;
}
