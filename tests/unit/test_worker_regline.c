/*
 * test_worker_regline.c: a line of the host's registry of held
 * directories (regline.c), as one worker writes it and another checks a
 * job against it: nesting either way is a clash named in the message, a
 * sibling is not, a profile may lie in another job's profile but not in
 * its output, the same job elsewhere is its stale attempt, and a line
 * that is not exactly the format (a bad id anywhere in it) is no clash.
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

static char base[256], root[300];
static struct path_dir a, ab, c;

/* A tree root/{a/b,c}, each opened. */
static int
setup(void **state)
{
	char err[ERR_MAX];

	(void)state;
	snprintf(base, sizeof base, "/tmp/debate-test-regline.XXXXXX");
	if (mkdtemp(base) == NULL)
		return -1;
	snprintf(root, sizeof root, "%s/root", base);
	if (mkdir(root, 0755) != 0 || path_open(root, "a/b", true, &ab, err, sizeof err) != 0 ||
	    path_open(root, "a", false, &a, err, sizeof err) != 0 ||
	    path_open(root, "c", true, &c, err, sizeof err) != 0)
		return -1;
	return 0;
}

static int
teardown(void **state)
{
	(void)state;
	path_close(&a);
	path_close(&ab);
	path_close(&c);
	return unit_rmtree(base);
}

/* regline_clash() of a copy of line (newline cut, as the registry splits it) against w. */
static bool
clash(const char *line, struct regline_want *w)
{
	char *copy = strdup(line);
	size_t n = strlen(copy);
	bool r;

	if (n > 0 && copy[n - 1] == '\n')
		copy[n - 1] = '\0';
	w->err[0] = '\0';
	r = regline_clash(copy, "w1", w);
	free(copy);
	return r;
}

/* The line of dir as job j1's kind ('o' or 'p') in namespace ns1. */
static char *
line_of(const struct path_dir *pd, char kind)
{
	size_t len;
	char *l = regline_format("ns1", "j1", kind, pd, &len);

	assert_int_equal(strlen(l), len);
	assert_true(len > 0 && l[len - 1] == '\n');
	return l;
}

/* Nesting either way clashes, naming the job, the directory and the worker; a sibling does not. */
static void
test_output_against_output(void **state)
{
	char err[ERR_MAX];
	struct regline_want w = { "ns1", "j2", NULL, &ab, NULL, "a/b", err, sizeof err };
	char *held_a = line_of(&a, 'o'), *held_ab = line_of(&ab, 'o');

	(void)state;
	assert_true(strncmp(held_a, "ns1 j1 o ", 9) == 0);
	assert_true(clash(held_a, &w));	/* a/b inside the running a */
	assert_string_equal(err, "output: \"a/b\" overlaps running job j1's output (on worker w1, this host)");
	w.out = &a;
	w.out_name = "a";
	assert_true(clash(held_ab, &w));	/* a holds the running a/b */
	assert_non_null(strstr(err, "output: \"a\" overlaps running job j1's output"));
	w.out = &c;
	w.out_name = "c";
	assert_false(clash(held_a, &w));
	assert_false(clash(held_ab, &w));
	free(held_a);
	free(held_ab);
}

/* A profile clashes with a running output only; an output with a running profile too. */
static void
test_profiles(void **state)
{
	char err[ERR_MAX];
	struct regline_want w = { "ns1", "j2", &ab, NULL, "a/b", NULL, err, sizeof err };
	char *out_a = line_of(&a, 'o'), *prof_a = line_of(&a, 'p');

	(void)state;
	assert_true(clash(out_a, &w));
	assert_string_equal(err, "profile: \"a/b\" overlaps running job j1's output (on worker w1, this host)");
	assert_false(clash(prof_a, &w));	/* two jobs may read one profile */
	w.prof = NULL;
	w.out = &ab;
	w.out_name = "a/b";
	assert_true(clash(prof_a, &w));
	assert_non_null(strstr(err, "overlaps running job j1's profile"));
	free(out_a);
	free(prof_a);
}

/* The same namespace and id on another worker is a stale attempt of this job. */
static void
test_same_job_is_no_clash(void **state)
{
	char err[ERR_MAX];
	struct regline_want w = { "ns1", "j1", NULL, &ab, NULL, "a/b", err, sizeof err };
	char *held = line_of(&ab, 'o');

	(void)state;
	assert_false(clash(held, &w));
	w.ns = "ns2";
	assert_true(clash(held, &w));
	free(held);
}

/* Anything but the format, anywhere in the line, makes it no clash (and no crash). */
static void
test_malformed_lines(void **state)
{
	char err[ERR_MAX], line[4096];
	struct regline_want w = { "ns1", "j2", NULL, &ab, NULL, "a/b", err, sizeof err };
	char *good = line_of(&ab, 'o');
	const char *tails[] = { " x", " 1:", " :1", " 1:2:3", " -1:5", " 1:5x", " +1:5", " 1 :5",
	    " 99999999999999999999999:1" };
	const char *whole[] = { "", "ns1", "ns1 j1", "ns1 j1 o", "ns1 j1 o ", "ns1 j1 q 1:2", "worker w1" };

	(void)state;
	assert_true(clash(good, &w));
	good[strlen(good) - 1] = '\0';
	for (size_t i = 0; i < sizeof tails / sizeof *tails; i++) {
		snprintf(line, sizeof line, "%s%s", good, tails[i]);
		assert_false(clash(line, &w));
	}
	for (size_t i = 0; i < sizeof whole / sizeof *whole; i++)
		assert_false(clash(whole[i], &w));
	free(good);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_output_against_output, setup, teardown),
		cmocka_unit_test_setup_teardown(test_profiles, setup, teardown),
		cmocka_unit_test_setup_teardown(test_same_job_is_no_clash, setup, teardown),
		cmocka_unit_test_setup_teardown(test_malformed_lines, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
