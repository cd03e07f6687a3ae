/*
 * test_worker_sandbox.c: the worker's pure functions: the runtime argv
 * (no shell ever sees job data), the exec-mode environment, and the one
 * mapping from exit status to outcome.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include <cmocka.h>

#include "worker.h"

/* The unit tests link the worker's modules without main.c. */
struct worker *wk;

static struct sandbox_spec spec = {
	.ns = "debate", .job_id = "job-1", .worker_id = "host-7", .attempt = 2, .expires = 1700003600,
	.profile = "/srv/builds/p", .output = "/srv/builds/o", .cidfile = "/run/w/job-1.2.cid",
	.epoch = 1700000000, .memory = 512ULL << 20, .cpus = 1.5, .pids = 256,
	.image = "localhost/debate-archiso:latest",
};

/* Index of s in argv, or -1. */
static int
find(const struct strv *argv, const char *s)
{
	for (size_t i = 0; i < argv->n; i++)
		if (strcmp(argv->v[i], s) == 0)
			return (int)i;
	return -1;
}

/* The default (safe) configuration's run argv, flag by flag. */
static void
test_run_argv_defaults(void **state)
{
	struct runtime rt = { .kind = RT_PODMAN, .path = (char *)(uintptr_t)"/usr/bin/podman" };
	struct strv argv = { 0 };
	struct config c;
	int img;

	(void)state;
	config_defaults(&c);
	strv_split(&c.runtime_args, "--runtime runc --cgroup-manager cgroupfs", " ");
	sandbox_argv(&c, &rt, &spec, &argv);
	assert_string_equal(argv.v[0], "/usr/bin/podman");
	assert_string_equal(argv.v[1], "--runtime");
	assert_string_equal(argv.v[2], "runc");
	assert_string_equal(argv.v[5], "run");
	assert_true(find(&argv, "--rm") > 5);
	assert_true(find(&argv, "--init") > 5);
	assert_true(find(&argv, "--name=debate-build-job-1") > 0);
	assert_true(find(&argv, "--cidfile=/run/w/job-1.2.cid") > 0);
	assert_true(find(&argv, "--label=debate.worker=host-7") > 0);
	assert_true(find(&argv, "--label=debate.job=job-1") > 0);
	assert_true(find(&argv, "--label=debate.attempt=2") > 0);
	assert_true(find(&argv, "--label=debate.expires=1700003600") > 0);
	assert_true(find(&argv, "--memory=536870912") > 0);
	assert_true(find(&argv, "--memory-swap=536870912") > 0);
	assert_true(find(&argv, "--cpus=1.500") > 0);
	assert_true(find(&argv, "--pids-limit=256") > 0);
	assert_true(find(&argv, "--network=none") > 0);
	assert_true(find(&argv, "--cap-drop=ALL") > 0);
	assert_true(find(&argv, "--cap-add=SYS_CHROOT") > 0);
	assert_true(find(&argv, "--security-opt=no-new-privileges") > 0);
	assert_true(find(&argv, "--read-only") > 0);
	assert_true(find(&argv, "--privileged") < 0);
	assert_true(find(&argv, "--volume=/srv/builds/p:/build/profile:ro") > 0);
	assert_true(find(&argv, "--volume=/srv/builds/o:/build/output:rw") > 0);
	assert_true(find(&argv, "--env=SOURCE_DATE_EPOCH=1700000000") > 0);
	assert_true(find(&argv, "--env=LC_ALL=C") > 0);
	assert_true(find(&argv, "--env=TZ=UTC") > 0);
	img = find(&argv, "localhost/debate-archiso:latest");
	assert_true(img > 0);
	/* The image is followed by exactly the configured command. */
	assert_int_equal(argv.n - (size_t)img - 1, c.command.n);
	assert_string_equal(argv.v[img + 1], "mkarchiso");
	assert_string_equal(argv.v[argv.n - 1], "/build/profile");
	assert_null(argv.v[argv.n]);
	strv_free(&argv);
	config_free(&c);
}

/* privileged drops the capability flags; sudo and env_allow show up. */
static void
test_run_argv_privileged_sudo_env(void **state)
{
	struct runtime rt = { .kind = RT_DOCKER, .path = (char *)(uintptr_t)"/usr/bin/docker", .sudo = true };
	struct strv argv = { 0 };
	struct config c;

	(void)state;
	config_defaults(&c);
	c.privileged = true;
	c.read_only = false;
	strv_split(&c.env_allow, "DEBATE_TEST_PROXY DEBATE_UNSET_VAR", " ");
	strv_split(&c.mounts, "/var/cache/pkg:/var/cache/pacman/pkg:ro", " ");
	setenv("DEBATE_TEST_PROXY", "http://proxy:3128", 1);
	unsetenv("DEBATE_UNSET_VAR");
	sandbox_argv(&c, &rt, &spec, &argv);
	assert_string_equal(argv.v[0], "sudo");
	assert_string_equal(argv.v[1], "-n");
	/* sudo resets the environment: the allowed names are asked to pass. */
	assert_string_equal(argv.v[2], "--preserve-env=DEBATE_TEST_PROXY");
	assert_string_equal(argv.v[3], "/usr/bin/docker");
	assert_true(find(&argv, "--privileged") > 0);
	assert_true(find(&argv, "--cap-drop=ALL") < 0);
	assert_true(find(&argv, "--read-only") < 0);
	/* The name alone: the value stays in the environment, off the argv. */
	assert_true(find(&argv, "--env=DEBATE_TEST_PROXY") > 0);
	for (size_t i = 0; i < argv.n; i++) {
		assert_null(strstr(argv.v[i], "DEBATE_UNSET_VAR"));
		assert_null(strstr(argv.v[i], "proxy:3128"));
	}
	assert_true(find(&argv, "--volume=/var/cache/pkg:/var/cache/pacman/pkg:ro") > 0);
	strv_free(&argv);
	config_free(&c);
}

/* env_allow values never reach an argv, with or without sudo. */
static void
test_run_argv_env_names_only(void **state)
{
	struct runtime rt = { .kind = RT_PODMAN, .path = (char *)(uintptr_t)"/usr/bin/podman" };
	struct strv argv = { 0 };
	struct config c;

	(void)state;
	config_defaults(&c);
	strv_split(&c.env_allow, "DEBATE_T_TOKEN DEBATE_T_OTHER DEBATE_T_UNSET", " ");
	setenv("DEBATE_T_TOKEN", "s3cret-token", 1);
	setenv("DEBATE_T_OTHER", "other=value", 1);
	unsetenv("DEBATE_T_UNSET");
	sandbox_argv(&c, &rt, &spec, &argv);
	assert_string_equal(argv.v[0], "/usr/bin/podman");
	assert_true(find(&argv, "--env=DEBATE_T_TOKEN") > 0);
	assert_true(find(&argv, "--env=DEBATE_T_OTHER") > 0);
	for (size_t i = 0; i < argv.n; i++) {
		assert_null(strstr(argv.v[i], "s3cret"));
		assert_null(strstr(argv.v[i], "other=value"));
		assert_null(strstr(argv.v[i], "--preserve-env"));
		assert_null(strstr(argv.v[i], "DEBATE_T_UNSET"));
	}
	/* The fixed variables keep their values (they are no secrets). */
	assert_true(find(&argv, "--env=TZ=UTC") > 0);

	rt.sudo = true;
	sandbox_argv(&c, &rt, &spec, &argv);
	assert_string_equal(argv.v[2], "--preserve-env=DEBATE_T_TOKEN,DEBATE_T_OTHER");
	assert_string_equal(argv.v[3], "/usr/bin/podman");
	for (size_t i = 0; i < argv.n; i++)
		assert_null(strstr(argv.v[i], "s3cret"));
	/* Helper calls pass no environment. */
	sandbox_stop_argv(&c, &rt, "debate-build-job-1", &argv);
	assert_string_equal(argv.v[2], "/usr/bin/podman");
	unsetenv("DEBATE_T_TOKEN");
	unsetenv("DEBATE_T_OTHER");
	/* Nothing allowed is set: plain "sudo -n". */
	sandbox_argv(&c, &rt, &spec, &argv);
	assert_string_equal(argv.v[2], "/usr/bin/podman");
	strv_free(&argv);
	config_free(&c);
}

/* Hostile-looking but valid values stay single argv elements. */
static void
test_run_argv_no_splitting(void **state)
{
	struct runtime rt = { .kind = RT_PODMAN, .path = (char *)(uintptr_t)"podman" };
	struct sandbox_spec s = spec;
	struct strv argv = { 0 };
	struct config c;

	(void)state;
	config_defaults(&c);
	s.profile = "/srv/builds/a dir;echo x $(id)";
	sandbox_argv(&c, &rt, &s, &argv);
	assert_true(find(&argv, "--volume=/srv/builds/a dir;echo x $(id):/build/profile:ro") > 0);
	strv_free(&argv);
	config_free(&c);
}

/* exec mode: the command itself, and a controlled environment. */
static void
test_exec_mode(void **state)
{
	struct runtime rt = { .kind = RT_EXEC };
	char *envin[] = { (char *)(uintptr_t)"PATH=/bin", (char *)(uintptr_t)"SECRET=x",
		(char *)(uintptr_t)"HOME=/root", NULL };
	struct strv argv = { 0 }, env = { 0 };
	struct config c;

	(void)state;
	config_defaults(&c);
	strv_split(&c.command, "/bin/true -x", " ");
	sandbox_argv(&c, &rt, &spec, &argv);
	assert_int_equal(argv.n, 2);
	assert_string_equal(argv.v[0], "/bin/true");
	sandbox_env(&c, &spec, envin, &env);
	assert_true(find(&env, "PATH=/bin") >= 0);
	assert_true(find(&env, "SECRET=x") < 0);
	assert_true(find(&env, "SOURCE_DATE_EPOCH=1700000000") >= 0);
	assert_true(find(&env, "TZ=UTC") >= 0);
	assert_true(find(&env, "DEBATE_OUTPUT=/srv/builds/o") >= 0);
	strv_free(&argv);
	strv_free(&env);
	config_free(&c);
}

/* stop, rm and ps argv. */
static void
test_helper_argv(void **state)
{
	struct runtime rt = { .kind = RT_PODMAN, .path = (char *)(uintptr_t)"podman" };
	struct strv argv = { 0 };
	struct config c;

	(void)state;
	config_defaults(&c);
	c.stop_grace = 7;
	sandbox_stop_argv(&c, &rt, "debate-build-x", &argv);
	assert_string_equal(argv.v[1], "stop");
	assert_string_equal(argv.v[2], "--time=7");
	assert_string_equal(argv.v[3], "debate-build-x");
	sandbox_rm_argv(&c, &rt, "debate-build-x", &argv);
	assert_string_equal(argv.v[1], "rm");
	assert_string_equal(argv.v[2], "--force");
	sandbox_ps_argv(&c, &rt, "debate.worker=w1", &argv);
	assert_true(find(&argv, "--filter=label=debate.worker=w1") > 0);
	strv_free(&argv);
	config_free(&c);
}

/* The orphan sweep lists ids (not names) with the worker label, per runtime. */
static void
test_ps_and_inspect_argv(void **state)
{
	struct runtime pm = { .kind = RT_PODMAN, .path = (char *)(uintptr_t)"/usr/bin/podman", .sudo = true };
	struct runtime dk = { .kind = RT_DOCKER, .path = (char *)(uintptr_t)"docker" };
	struct strv argv = { 0 };
	struct config c;

	(void)state;
	config_defaults(&c);
	sandbox_ps_argv(&c, &pm, "debate.worker=w1", &argv);
	assert_int_equal(argv.n, 7);
	assert_string_equal(argv.v[0], "sudo");
	assert_string_equal(argv.v[1], "-n");
	assert_string_equal(argv.v[2], "/usr/bin/podman");
	assert_string_equal(argv.v[3], "ps");
	assert_string_equal(argv.v[4], "--all");
	assert_string_equal(argv.v[5], "--filter=label=debate.worker=w1");
	assert_string_equal(argv.v[6], "--format={{.ID}} {{.Names}} {{index .Labels \"debate.worker\"}}");
	sandbox_ps_argv(&c, &dk, "debate.worker=w1", &argv);
	assert_int_equal(argv.n, 5);
	assert_string_equal(argv.v[4], "--format={{.ID}} {{.Names}} {{.Label \"debate.worker\"}}");

	/* inspect: the name (or id) is one argument of its own, last. */
	sandbox_inspect_id_argv(&c, &dk, "debate-build-x; rm -rf /", &argv);
	assert_int_equal(argv.n, 5);
	assert_string_equal(argv.v[1], "inspect");
	assert_string_equal(argv.v[2], "--type=container");
	assert_string_equal(argv.v[3],
	    "--format={{.Id}} {{index .Config.Labels \"debate.ns\"}} {{index .Config.Labels \"debate.job\"}}");
	assert_string_equal(argv.v[4], "debate-build-x; rm -rf /");
	sandbox_inspect_worker_argv(&c, &pm, "0123456789ab", &argv);
	assert_int_equal(argv.n, 7);
	assert_string_equal(argv.v[3], "inspect");
	assert_string_equal(argv.v[4], "--type=container");
	assert_string_equal(argv.v[5], "--format={{index .Config.Labels \"debate.worker\"}}");
	assert_string_equal(argv.v[6], "0123456789ab");
	sandbox_inspect_worker_argv(&c, &dk, "0123456789ab", &argv);
	assert_string_equal(argv.v[3], "--format={{index .Config.Labels \"debate.worker\"}}");
	strv_free(&argv);
	config_free(&c);
}

/* An error reply with the given text. */
static redisReply *
err_reply(const char *text)
{
	static redisReply r;
	static char buf[256];

	snprintf(buf, sizeof buf, "%s", text);
	memset(&r, 0, sizeof r);
	r.type = REDIS_REPLY_ERROR;
	r.str = buf;
	r.len = strlen(buf);
	return &r;
}

/* The retry policy: which error replies are retried, reconnected for, or answers. */
static void
test_reply_classes(void **state)
{
	static const char *const retry[] = {
		"BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE.",
		"LOADING Redis is loading the dataset in memory",
		"MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist to disk.",
		"OOM command not allowed when used memory > 'maxmemory'.",
		"OOM command not allowed when used memory > 'maxmemory'. script: 3ad9, on @user_script:1.",
		"NOSCRIPT No matching script. Please use EVAL.",
		"TRYAGAIN Multiple keys request during rehashing of slot",
		"CLUSTERDOWN The cluster is down",
		"BUSY",
	};
	static const char *const reconnect[] = {
		"READONLY You can't write against a read only replica.",
		"MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
		"NOREPLICAS Not enough good replicas to write.",
	};
	static const char *const answer[] = {
		"ERR user_script:1: Script attempted to access nonexistent global variable 'x'",
		"WRONGTYPE Operation against a key holding the wrong kind of value",
		"BUSYKEY Target key name already exists.",
		"BUSYGROUP Consumer Group name already exists",
		"OOMX not an OOM", "NOAUTH Authentication required.", "", "busy lower case",
	};
	redisReply ok = { .type = REDIS_REPLY_STRING, .str = (char *)(uintptr_t)"BUSY", .len = 4 };

	(void)state;
	for (size_t i = 0; i < sizeof retry / sizeof retry[0]; i++)
		assert_int_equal(rconn_classify(err_reply(retry[i])), REPLY_RETRY);
	for (size_t i = 0; i < sizeof reconnect / sizeof reconnect[0]; i++)
		assert_int_equal(rconn_classify(err_reply(reconnect[i])), REPLY_RECONNECT);
	for (size_t i = 0; i < sizeof answer / sizeof answer[0]; i++)
		assert_int_equal(rconn_classify(err_reply(answer[i])), REPLY_ANSWER);
	assert_int_equal(rconn_classify(&ok), REPLY_ANSWER);	/* a string "BUSY" is an answer */
	assert_int_equal(rconn_classify(NULL), REPLY_ANSWER);
}

/* A wait status for exit code n. */
#define EXITED(n) ((n) << 8)
/* The memory limit the OOM message names. */
#define MEM (512ULL << 20)

/* Every branch of the exit status to outcome mapping. */
static void
test_outcome(void **state)
{
	char err[ERR_MAX];
	int code;

	(void)state;
	assert_int_equal(outcome_decide(RT_PODMAN, EXITED(0), false, STOP_NONE, MEM, 30, &code, err, sizeof err), ST_SUCCEEDED);
	assert_int_equal(code, 0);
	assert_string_equal(err, "");
	assert_int_equal(outcome_decide(RT_PODMAN, EXITED(3), false, STOP_NONE, MEM, 30, &code, err, sizeof err), ST_FAILED);
	assert_int_equal(code, 3);
	assert_non_null(strstr(err, "code 3"));
	/* mkarchiso exits 1 after the kernel killed a step: still an OOM kill. */
	assert_int_equal(outcome_decide(RT_PODMAN, EXITED(1), true, STOP_NONE, MEM, 30, &code, err, sizeof err), ST_OOM_KILLED);
	/* The message is the one the result records, limit and all (job_end adds nothing). */
	assert_string_equal(err, "the kernel killed a process of the build for memory (limit 512.0 MiB)");
	assert_int_equal(outcome_decide(RT_DOCKER, EXITED(137), true, STOP_NONE, MEM, 30, &code, err, sizeof err), ST_OOM_KILLED);
	/* A stop we asked for wins over what it caused. */
	assert_int_equal(outcome_decide(RT_PODMAN, EXITED(137), false, STOP_TIMEOUT, MEM, 30, &code, err, sizeof err), ST_TIMED_OUT);
	assert_string_equal(err, "stopped after its timeout of 30 s");
	assert_int_equal(outcome_decide(RT_PODMAN, EXITED(137), false, STOP_TIMEOUT, MEM, 2.5, &code, err, sizeof err), ST_TIMED_OUT);
	assert_string_equal(err, "stopped after its timeout of 2.5 s");
	assert_int_equal(outcome_decide(RT_PODMAN, EXITED(137), true, STOP_CANCEL, MEM, 30, &code, err, sizeof err), ST_CANCELLED);
	assert_int_equal(outcome_decide(RT_PODMAN, EXITED(125), false, STOP_NONE, MEM, 30, &code, err, sizeof err), ST_ERROR);
	assert_non_null(strstr(err, "125"));
	assert_int_equal(outcome_decide(RT_EXEC, EXITED(125), false, STOP_NONE, MEM, 30, &code, err, sizeof err), ST_FAILED);
	assert_int_equal(outcome_decide(RT_DOCKER, EXITED(127), false, STOP_NONE, MEM, 30, &code, err, sizeof err), ST_ERROR);
	assert_int_equal(outcome_decide(RT_EXEC, SIGKILL, false, STOP_NONE, MEM, 30, &code, err, sizeof err), ST_FAILED);
	assert_int_equal(code, -1);
	assert_int_equal(outcome_decide(RT_PODMAN, SIGKILL, false, STOP_NONE, MEM, 30, &code, err, sizeof err), ST_ERROR);
	assert_non_null(strstr(err, "signal 9"));
}

/* runtime_detect: exec, explicit names, and a refusal that names the key. */
static void
test_runtime_detect(void **state)
{
	struct runtime rt;
	struct config c;
	char err[ERR_MAX];

	(void)state;
	config_defaults(&c);
	free(c.runtime);
	c.runtime = xstrdup("exec");
	assert_int_equal(runtime_detect(&c, &rt, err, sizeof err), 0);
	assert_int_equal(rt.kind, RT_EXEC);
	free(c.runtime);
	c.runtime = xstrdup("/bin/true");
	assert_int_equal(runtime_detect(&c, &rt, err, sizeof err), -1);
	assert_non_null(strstr(err, "docker or podman"));
	free(c.runtime);
	c.runtime = xstrdup("no-such-runtime-docker");
	assert_int_equal(runtime_detect(&c, &rt, err, sizeof err), -1);
	assert_non_null(strstr(err, "[sandbox] runtime"));
	config_free(&c);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_run_argv_defaults),
		cmocka_unit_test(test_run_argv_privileged_sudo_env),
		cmocka_unit_test(test_run_argv_env_names_only),
		cmocka_unit_test(test_run_argv_no_splitting),
		cmocka_unit_test(test_exec_mode),
		cmocka_unit_test(test_helper_argv),
		cmocka_unit_test(test_ps_and_inspect_argv),
		cmocka_unit_test(test_reply_classes),
		cmocka_unit_test(test_outcome),
		cmocka_unit_test(test_runtime_detect),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
