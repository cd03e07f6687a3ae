/*
 * test_worker_cgroup.c: finding a container's memory cgroup and reading
 * its OOM kill counter in fake cgroup v1 and v2 trees (cgroup_root points
 * there): the places the runtimes use, a systemd slice found by search
 * (never podman's conmon scope), the counter read without any write
 * access, the highest count kept, and a cgroup that is gone.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "unit.h"
#include "worker.h"

struct worker *wk;

#define CID "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

static char root[256];

/* mkdir -p of root/rel. */
static void
mkdirs(const char *rel)
{
	char path[1024], *p;

	snprintf(path, sizeof path, "%s/%s", root, rel);
	for (p = path + strlen(root) + 1; (p = strchr(p, '/')) != NULL; p++) {
		*p = '\0';
		mkdir(path, 0755);
		*p = '/';
	}
	mkdir(path, 0755);
}

/* Write text to root/rel. */
static void
put(const char *rel, const char *text)
{
	char path[1024];
	FILE *f;

	snprintf(path, sizeof path, "%s/%s", root, rel);
	assert_non_null(f = fopen(path, "w"));
	fputs(text, f);
	fclose(f);
}

/* A fresh fake root for each test. */
static int
setup(void **state)
{
	(void)state;
	snprintf(root, sizeof root, "/tmp/debate-cgtest-XXXXXX");
	assert_non_null(mkdtemp(root));
	cgroup_root = root;
	return 0;
}

static int
teardown(void **state)
{
	(void)state;
	unit_rmtree(root);
	return 0;
}

/* v2 under systemd: machine.slice/libpod-ID.scope; memory.events's oom_kill. */
static void
test_v2_systemd_slice(void **state)
{
	struct cgroup cg;
	char want[512];
	uint64_t mem;
	double cpu;

	(void)state;
	put("cgroup.controllers", "cpu memory pids\n");
	mkdirs("machine.slice/libpod-conmon-" CID ".scope");
	mkdirs("machine.slice/libpod-" CID ".scope");
	put("machine.slice/libpod-" CID ".scope/memory.events", "low 0\nhigh 0\nmax 3\noom 0\noom_kill 0\n");
	put("machine.slice/libpod-" CID ".scope/memory.current", "1048576\n");
	put("machine.slice/libpod-" CID ".scope/cpu.stat", "usage_usec 2500000\nuser_usec 1\n");
	assert_int_equal(cgroup_find(CID, &cg), 0);
	assert_true(cg.v2);
	snprintf(want, sizeof want, "%s/machine.slice/libpod-%s.scope", root, CID);
	assert_string_equal(cg.mem_dir, want);
	assert_string_equal(cg.cpu_dir, want);
	assert_false(cgroup_oom_check(&cg));
	assert_int_equal(cgroup_stats(&cg, &mem, &cpu), 0);
	assert_int_equal(mem, 1048576);
	assert_true(cpu > 2.49 && cpu < 2.51);

	/* A kill shows in the counter: seen once; a lower read keeps the highest. */
	put("machine.slice/libpod-" CID ".scope/memory.events", "low 0\nhigh 0\nmax 9\noom 1\noom_kill 2\n");
	assert_true(cgroup_oom_check(&cg));
	assert_false(cgroup_oom_check(&cg));
	put("machine.slice/libpod-" CID ".scope/memory.events", "oom_kill 1\n");
	assert_false(cgroup_oom_check(&cg));
	assert_int_equal(cg.oom_kills, 2);
	assert_false(cgroup_gone(&cg));
	cgroup_close(&cg);
}

/* Rootless podman nests the scope under the user's slice: the search finds it, not conmon's. */
static void
test_v2_search_skips_conmon(void **state)
{
	struct cgroup cg;

	(void)state;
	put("cgroup.controllers", "memory\n");
	mkdirs("user.slice/user-1000.slice/user@1000.service/user.slice/libpod-" CID ".scope");
	mkdirs("user.slice/user-1000.slice/user@1000.service/user.slice/libpod-conmon-" CID ".scope");
	assert_int_equal(cgroup_find(CID, &cg), 0);
	assert_null(strstr(cg.mem_dir, "conmon"));
	assert_non_null(strstr(cg.mem_dir, "user@1000.service/user.slice/libpod-" CID ".scope"));
	cgroup_close(&cg);
	assert_int_equal(cgroup_find("fedcba9876543210", &cg), -1);
	cgroup_close(&cg);
}

/*
 * v1 (or hybrid): memory and cpuacct hierarchies; memory.oom_control's
 * oom_kill.  No cgroup.event_control to write to (as without root): the
 * watch cannot be armed, the counter still reads.
 */
static void
test_v1_counter_without_write_access(void **state)
{
	struct cgroup cg;
	char want[512];

	(void)state;
	mkdirs("memory/libpod_parent/libpod-" CID);
	mkdirs("cpuacct/libpod_parent/libpod-" CID);
	put("memory/memory.limit_in_bytes", "9223372036854771712\n");
	put("memory/libpod_parent/libpod-" CID "/memory.oom_control",
	    "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n");
	assert_int_equal(cgroup_find(CID, &cg), 0);
	assert_false(cg.v2);
	snprintf(want, sizeof want, "%s/memory/libpod_parent/libpod-%s", root, CID);
	assert_string_equal(cg.mem_dir, want);
	snprintf(want, sizeof want, "%s/cpuacct/libpod_parent/libpod-%s", root, CID);
	assert_string_equal(cg.cpu_dir, want);
	assert_int_equal(cgroup_watch_oom(&cg), -1);
	assert_false(cgroup_oom_check(&cg));
	put("memory/libpod_parent/libpod-" CID "/memory.oom_control",
	    "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n");
	assert_true(cgroup_oom_check(&cg));
	assert_int_equal(cg.oom_kills, 1);

	/* Removed with the container: gone, and nothing new to report. */
	{
		char path[1024];
		snprintf(path, sizeof path, "%s/memory.oom_control", cg.mem_dir);
		unlink(path);
		rmdir(cg.mem_dir);
	}
	assert_true(cgroup_gone(&cg));
	assert_false(cgroup_oom_check(&cg));
	assert_int_equal(cg.oom_kills, 1);
	cgroup_close(&cg);
}

/* Docker's cgroupfs layout on v1, and a host with no cgroup fs at all. */
static void
test_v1_docker_and_none(void **state)
{
	struct cgroup cg;

	(void)state;
	assert_int_equal(cgroup_find(CID, &cg), -1);
	cgroup_close(&cg);
	mkdirs("memory/docker/" CID);
	mkdirs("cpu,cpuacct/docker/" CID);
	put("memory/memory.limit_in_bytes", "1\n");
	assert_int_equal(cgroup_find(CID, &cg), 0);
	assert_non_null(strstr(cg.mem_dir, "/memory/docker/" CID));
	assert_non_null(strstr(cg.cpu_dir, "/cpu,cpuacct/docker/" CID));
	cgroup_close(&cg);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_v2_systemd_slice, setup, teardown),
		cmocka_unit_test_setup_teardown(test_v2_search_skips_conmon, setup, teardown),
		cmocka_unit_test_setup_teardown(test_v1_counter_without_write_access, setup, teardown),
		cmocka_unit_test_setup_teardown(test_v1_docker_and_none, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
