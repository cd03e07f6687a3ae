/*
 * outcome.c: how a build ended, as a status and the message its result
 * records.  Pure: no I/O, no job, unit tested (test_worker_sandbox.c).
 */
#include <string.h>
#include <sys/wait.h>

#include "worker.h"

/*
 * Exit status to outcome, in one place.  A stop we asked for wins over the
 * exit code it caused; an OOM kill anywhere in the build wins over the
 * exit code the build chose after it (mkarchiso exits 1).  Container
 * runtimes exit 125 when they fail themselves, 126/127 when the command
 * cannot be run.  err gets the message the result records, whole: the
 * memory limit of an OOM kill, the timeout of a timed-out build.
 */
enum status
outcome_decide(enum rt_kind rt, int wstatus, bool oom, enum stop_reason stop, uint64_t memory,
    double timeout, int *exit_code, char *err, size_t errlen)
{
	int code = WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : -1;
	char b[32];

	*exit_code = code;
	err[0] = '\0';
	if (stop == STOP_CANCEL) {
		snprintf(err, errlen, "cancelled");
		return ST_CANCELLED;
	}
	if (stop == STOP_TIMEOUT) {
		snprintf(err, errlen, "stopped after its timeout of %g s", timeout);
		return ST_TIMED_OUT;
	}
	if (stop == STOP_LEASE || stop == STOP_DRAIN) {
		snprintf(err, errlen, stop == STOP_LEASE ? "lease lost" : "stopped by a worker shutdown");
		return ST_ERROR;
	}
	if (oom) {
		snprintf(err, errlen, "the kernel killed a process of the build for memory (limit %s)",
		    fmt_bytes(memory, b, sizeof b));
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
 * Append the runtime's own complaint (the last line of the tail ring with
 * "Error" in it, e.g. which image is missing) to err.  tail is the ring,
 * next its write count; its lines are valid UTF-8, cut here on a
 * character boundary.
 */
void
outcome_detail(char *err, size_t errlen, const struct strv *tail, size_t next)
{
	size_t len = strlen(err);

	for (size_t k = 1; k <= tail->n && k <= next; k++) {
		const char *line = tail->v[(next - k) % tail->n];
		if (line != NULL && strstr(line, "Error") != NULL && len + 3 < errlen) {
			size_t room = errlen - len - 3;
			snprintf(err + len, errlen - len, ": %.*s",
			    (int)utf8_cut(line, strlen(line), room, false), line);
			return;
		}
	}
}
