/*
 * test_worker_job.c: the job state machine's transition table.  Every
 * edge of the diagram at the top of worker/job.c is allowed, every other
 * one is refused (the state stays), and in strict mode an illegal edge is
 * fatal.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "job.h"

/* The unit tests link the worker's modules without main.c. */
struct worker *wk;

#define NSTATES (JOB_DONE + 1)

/* The edges the diagram in worker/job.c shows, and no other. */
static const enum job_state edges[][2] = {
	{ JOB_CLAIMING, JOB_UNPACKING }, { JOB_UNPACKING, JOB_CLAIMING }, { JOB_UNPACKING, JOB_REFUSING },
	{ JOB_CLAIMING, JOB_REFUSING }, { JOB_CLAIMING, JOB_STARTING }, { JOB_CLAIMING, JOB_COLLECTING },
	{ JOB_CLAIMING, JOB_DONE }, { JOB_STARTING, JOB_RUNNING }, { JOB_STARTING, JOB_COLLECTING },
	{ JOB_STARTING, JOB_DONE }, { JOB_RUNNING, JOB_STOPPING }, { JOB_RUNNING, JOB_STARTING },
	{ JOB_RUNNING, JOB_COLLECTING }, { JOB_STOPPING, JOB_COLLECTING }, { JOB_STOPPING, JOB_DONE },
	{ JOB_COLLECTING, JOB_UPLOADING }, { JOB_COLLECTING, JOB_FINISHING },
	{ JOB_UPLOADING, JOB_FINISHING }, { JOB_UPLOADING, JOB_DONE }, { JOB_FINISHING, JOB_DONE },
	{ JOB_REFUSING, JOB_DONE },
};

/* Whether from -> to is in the list above. */
static bool
edge_listed(enum job_state from, enum job_state to)
{
	for (size_t i = 0; i < sizeof edges / sizeof edges[0]; i++)
		if (edges[i][0] == from && edges[i][1] == to)
			return true;
	return false;
}

/* Every pair of states: allowed exactly when the diagram has the edge. */
static void
test_table(void **state)
{
	struct job *j = calloc(1, sizeof *j);

	(void)state;
	job_strict_states = false;
	log_set_level((enum log_level)(LOG_ERR - 1));	/* quiet: the refusals below log errors */
	for (int from = 0; from < NSTATES; from++) {
		for (int to = 0; to < NSTATES; to++) {
			bool ok;
			j->state = (enum job_state)from;
			ok = job_set_state(j, (enum job_state)to);
			if (ok != edge_listed((enum job_state)from, (enum job_state)to))
				fail_msg("%s -> %s: %s", job_state_name((enum job_state)from),
				    job_state_name((enum job_state)to), ok ? "allowed" : "refused");
			assert_int_equal(j->state, ok ? to : from);
		}
	}
	free(j);
}

/* A refused edge leaves the job where it was (production: logged, not fatal). */
static void
test_illegal_refused(void **state)
{
	struct job *j = calloc(1, sizeof *j);

	(void)state;
	job_strict_states = false;
	log_set_level((enum log_level)(LOG_ERR - 1));
	j->state = JOB_RUNNING;
	assert_false(job_set_state(j, JOB_FINISHING));	/* a result without collecting */
	assert_int_equal(j->state, JOB_RUNNING);
	j->state = JOB_DONE;
	assert_false(job_set_state(j, JOB_RUNNING));	/* nothing comes after DONE */
	assert_int_equal(j->state, JOB_DONE);
	j->state = JOB_FINISHING;
	assert_false(job_set_state(j, JOB_COLLECTING));
	assert_int_equal(j->state, JOB_FINISHING);
	free(j);
}

/* Strict (test and sanitizer builds): an illegal edge ends the process. */
static void
test_illegal_fatal_when_strict(void **state)
{
	int st;
	pid_t pid;

	(void)state;
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		struct job j = { .state = JOB_CLAIMING };
		log_set_level((enum log_level)(LOG_ERR - 1));
		job_strict_states = true;
		job_set_state(&j, JOB_STARTING);	/* legal: goes on */
		job_set_state(&j, JOB_UPLOADING);	/* illegal: fatal */
		_exit(0);
	}
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_true(WIFEXITED(st));
	assert_int_not_equal(WEXITSTATUS(st), 0);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_table),
		cmocka_unit_test(test_illegal_refused),
		cmocka_unit_test(test_illegal_fatal_when_strict),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
