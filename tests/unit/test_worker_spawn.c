/*
 * test_worker_spawn.c: helper processes (proc_run) on a real libev loop:
 * the callback comes exactly once, with the output, also when a helper
 * ignores SIGTERM, outlives its deadline, or exits leaving its stdout held
 * open by a process of another session.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "worker.h"

struct worker *wk;

struct got {
	int calls;
	int wstatus;
	char out[256];
	double at;
};

/* The helper's callback: count it, keep what it says. */
static void
got_cb(int wstatus, const char *out, size_t len, void *arg)
{
	struct got *g = arg;

	g->calls++;
	g->wstatus = wstatus;
	snprintf(g->out, sizeof g->out, "%.*s", (int)len, out);
	g->at = now_mono();
}

/* Stop the loop. */
static void
stop_cb(EV_P_ ev_timer *w, int revents)
{
	(void)w;
	(void)revents;
	ev_break(loop, EVBREAK_ALL);
}

/* Run the loop for secs. */
static void
run_for(double secs)
{
	ev_timer t;

	ev_timer_init(&t, stop_cb, secs, 0);
	ev_timer_start(EV_DEFAULT, &t);
	ev_run(EV_DEFAULT, 0);
	ev_timer_stop(EV_DEFAULT, &t);
	defer_flush();
}

/* A helper that ends by itself: its output and status, at once. */
static void
test_helper_normal(void **state)
{
	char *argv[] = { (char *)(uintptr_t)"/bin/sh", (char *)(uintptr_t)"-c",
		(char *)(uintptr_t)"echo ok; exit 4", NULL };
	struct got g = { 0 };
	double t0 = now_mono();

	(void)state;
	proc_run_timeout(argv, 5, got_cb, &g);
	run_for(1.0);
	assert_int_equal(g.calls, 1);
	assert_true(WIFEXITED(g.wstatus) && WEXITSTATUS(g.wstatus) == 4);
	assert_string_equal(g.out, "ok\n");
	assert_true(g.at - t0 < 1.0);
}

/* Past the deadline SIGTERM ends a helper that does not ignore it. */
static void
test_helper_timeout_term(void **state)
{
	char *argv[] = { (char *)(uintptr_t)"sleep", (char *)(uintptr_t)"30", NULL };
	struct got g = { 0 };
	double t0 = now_mono();

	(void)state;
	proc_run_timeout(argv, 0.2, got_cb, &g);
	run_for(1.5);
	assert_int_equal(g.calls, 1);
	assert_true(WIFSIGNALED(g.wstatus) && WTERMSIG(g.wstatus) == SIGTERM);
	assert_true(g.at - t0 < 1.5);
}

/* One that ignores SIGTERM is killed, and reported killed, once. */
static void
test_helper_timeout_ignores_term(void **state)
{
	char *argv[] = { (char *)(uintptr_t)"/bin/sh", (char *)(uintptr_t)"-c",
		(char *)(uintptr_t)"trap '' TERM; echo started; exec sleep 30", NULL };
	struct got g = { 0 };
	double t0 = now_mono();

	(void)state;
	proc_run_timeout(argv, 0.2, got_cb, &g);
	run_for(3.5);
	assert_int_equal(g.calls, 1);
	assert_true(WIFSIGNALED(g.wstatus) && WTERMSIG(g.wstatus) == SIGKILL);
	assert_string_equal(g.out, "started\n");
	assert_true(g.at - t0 > 2.0 && g.at - t0 < 3.5);
}

/* It exited, but a process of another session holds its stdout: no EOF ever. */
static void
test_helper_exits_pipe_held(void **state)
{
	char *argv[] = { (char *)(uintptr_t)"/bin/sh", (char *)(uintptr_t)"-c",
		(char *)(uintptr_t)"setsid sleep 30 & echo $!; exit 3", NULL };
	struct got g = { 0 };
	double t0 = now_mono();
	long holder;

	(void)state;
	proc_run_timeout(argv, 0.5, got_cb, &g);
	run_for(2.0);
	assert_int_equal(g.calls, 1);
	assert_true(WIFEXITED(g.wstatus) && WEXITSTATUS(g.wstatus) == 3);
	holder = strtol(g.out, NULL, 10);
	assert_true(holder > 1);
	kill((pid_t)holder, SIGKILL);
	assert_true(g.at - t0 >= 0.5 && g.at - t0 < 1.5);
}

/* A command that cannot run: the callback still comes, once, with 127. */
static void
test_helper_cannot_run(void **state)
{
	char *argv[] = { (char *)(uintptr_t)"/nonexistent/helper", NULL };
	struct got g = { 0 };

	(void)state;
	proc_run_timeout(argv, 0.2, got_cb, &g);
	run_for(0.5);
	assert_int_equal(g.calls, 1);
	assert_true(WIFEXITED(g.wstatus) && WEXITSTATUS(g.wstatus) == 127);
}

/* The default loop and the deferred frees, once for every test. */
static int
setup(void **state)
{
	(void)state;
	log_init("test", LOG_ERR);
	ev_default_loop(0);
	defer_init();
	return 0;
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_helper_normal),
		cmocka_unit_test(test_helper_timeout_term),
		cmocka_unit_test(test_helper_timeout_ignores_term),
		cmocka_unit_test(test_helper_exits_pipe_held),
		cmocka_unit_test(test_helper_cannot_run),
	};

	return cmocka_run_group_tests(tests, setup, NULL);
}
