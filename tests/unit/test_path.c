/*
 * test_path.c: path_resolve(), which turns a job's profile and output into
 * real directories strictly below builds_root, following symlinks only
 * while they stay inside and creating nothing outside.
 *
 * Each test gets a fresh temporary tree:
 *   BASE/root      builds_root
 *   BASE/outside   a directory a hostile symlink points at
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "debate.h"
#include "unit.h"

struct tree {
	char base[PATH_MAX];	/* real path of the temporary directory */
	char root[PATH_MAX];	/* BASE/root */
	char outside[PATH_MAX];	/* BASE/outside */
};

static struct tree T;

/* path under BASE, in a static buffer (one at a time). */
static const char *
at(const char *rel)
{
	static char buf[PATH_MAX * 2];

	snprintf(buf, sizeof buf, "%s/%s", T.base, rel);
	return buf;
}

static void
mkdir_at(const char *rel)
{
	if (mkdir(at(rel), 0755) != 0)
		fail_msg("mkdir %s: %s", at(rel), strerror(errno));
}

static void
symlink_at(const char *target, const char *rel)
{
	char t[PATH_MAX * 2];

	snprintf(t, sizeof t, "%s", target);	/* target may be at()'s buffer */
	if (symlink(t, at(rel)) != 0)
		fail_msg("symlink %s -> %s: %s", at(rel), t, strerror(errno));
}

static void
file_at(const char *rel)
{
	int fd = open(at(rel), O_WRONLY | O_CREAT | O_TRUNC, 0644);

	if (fd < 0)
		fail_msg("create %s: %s", at(rel), strerror(errno));
	close(fd);
}

/* Whether anything (even a dangling symlink) is at BASE/rel. */
static bool
exists_at(const char *rel)
{
	struct stat st;

	return lstat(at(rel), &st) == 0;
}

static int
setup(void **state)
{
	char tmpl[] = "/tmp/debate-test-path.XXXXXX";

	(void)state;
	if (mkdtemp(tmpl) == NULL || realpath(tmpl, T.base) == NULL)
		return -1;
	snprintf(T.root, sizeof T.root, "%s/root", T.base);
	snprintf(T.outside, sizeof T.outside, "%s/outside", T.base);
	if (mkdir(T.root, 0755) != 0 || mkdir(T.outside, 0755) != 0)
		return -1;
	return 0;
}

static int
teardown(void **state)
{
	(void)state;
	return unit_rmtree(T.base);
}

/* Resolve rel, which must succeed with the real path want (under BASE). */
static void
resolve_ok(const char *root, const char *rel, bool create, const char *want_rel)
{
	char out[PATH_MAX], err[ERR_MAX] = "", want[PATH_MAX * 2];

	if (path_resolve(root, rel, create, out, sizeof out, err, sizeof err) != 0)
		fail_msg("path_resolve(\"%s\", \"%s\", %d) refused: %s", root, rel, create, err);
	snprintf(want, sizeof want, "%s/%s", T.base, want_rel);
	if (strcmp(out, want) != 0)
		fail_msg("path_resolve(\"%s\") = \"%s\", want \"%s\"", rel, out, want);
}

/* Resolve rel, which must be refused with an error containing frag. */
static void
resolve_bad(const char *rel, bool create, const char *frag)
{
	char out[PATH_MAX] = "untouched", err[ERR_MAX] = "";

	if (path_resolve(T.root, rel, create, out, sizeof out, err, sizeof err) == 0)
		fail_msg("path_resolve(\"%s\", create=%d) accepted it as \"%s\"", rel, create, out);
	if (strstr(err, frag) == NULL)
		fail_msg("path_resolve(\"%s\") error \"%s\" does not contain \"%s\"", rel, err, frag);
	assert_string_equal(out, "untouched");
}

static void
test_existing_dirs(void **state)
{
	(void)state;
	mkdir_at("root/profiles");
	mkdir_at("root/profiles/releng");
	resolve_ok(T.root, "profiles", false, "root/profiles");
	resolve_ok(T.root, "profiles/releng", false, "root/profiles/releng");
	resolve_ok(T.root, "profiles/releng/", false, "root/profiles/releng");
	resolve_ok(T.root, "profiles//releng", false, "root/profiles/releng");
	resolve_ok(T.root, "./profiles/./releng", false, "root/profiles/releng");
	/* create=true on what exists changes nothing. */
	resolve_ok(T.root, "profiles/releng", true, "root/profiles/releng");
}

static void
test_missing_profile(void **state)
{
	(void)state;
	resolve_bad("nope", false, "No such file or directory");
	resolve_bad("nope", false, "\"nope\"");
	mkdir_at("root/p");
	resolve_bad("p/nope/deeper", false, "No such file");
	assert_false(exists_at("root/nope"));
	assert_false(exists_at("root/p/nope"));
}

static void
test_output_created(void **state)
{
	struct stat st;

	(void)state;
	resolve_ok(T.root, "out", true, "root/out");
	assert_int_equal(stat(at("root/out"), &st), 0);
	assert_true(S_ISDIR(st.st_mode));

	resolve_ok(T.root, "jobs/2024/build-42/iso", true, "root/jobs/2024/build-42/iso");
	assert_int_equal(stat(at("root/jobs/2024/build-42/iso"), &st), 0);
	assert_true(S_ISDIR(st.st_mode));
	/* Again: it exists now. */
	resolve_ok(T.root, "jobs/2024/build-42/iso", true, "root/jobs/2024/build-42/iso");
	resolve_ok(T.root, "jobs/2024/build-42/iso", false, "root/jobs/2024/build-42/iso");
}

static void
test_symlink_inside(void **state)
{
	(void)state;
	mkdir_at("root/real");
	mkdir_at("root/real/sub");
	mkdir_at("root/links");
	symlink_at(at("root/real"), "root/abs");		/* absolute, inside */
	symlink_at("../real", "root/links/rel");		/* relative, inside */
	symlink_at("abs", "root/chain");			/* a link to a link, inside */
	resolve_ok(T.root, "abs", false, "root/real");
	resolve_ok(T.root, "abs/sub", false, "root/real/sub");
	resolve_ok(T.root, "links/rel/sub", false, "root/real/sub");
	resolve_ok(T.root, "chain/sub", false, "root/real/sub");
	/* Creating through an inside link creates inside. */
	resolve_ok(T.root, "links/rel/new/dir", true, "root/real/new/dir");
	assert_true(exists_at("root/real/new/dir"));
}

static void
test_symlink_outside_absolute(void **state)
{
	(void)state;
	symlink_at(T.outside, "root/esc");
	resolve_bad("esc", false, "outside builds_root");
	resolve_bad("esc", true, "outside builds_root");
	resolve_bad("esc/new", true, "outside builds_root");
	resolve_bad("esc/new/deeper", true, "outside builds_root");
	assert_false(exists_at("outside/new"));

	symlink_at("/", "root/slash");
	resolve_bad("slash", false, "outside builds_root");
	resolve_bad("slash/tmp", true, "outside builds_root");
	symlink_at("/etc", "root/etc");
	resolve_bad("etc", false, "outside builds_root");
}

static void
test_symlink_outside_relative(void **state)
{
	(void)state;
	mkdir_at("root/sub");
	symlink_at("../../outside", "root/sub/up");
	resolve_bad("sub/up", false, "outside builds_root");
	resolve_bad("sub/up/new", true, "outside builds_root");
	assert_false(exists_at("outside/new"));

	symlink_at("..", "root/parent");
	resolve_bad("parent", false, "outside builds_root");
	resolve_bad("parent/made-here", true, "outside builds_root");
	assert_false(exists_at("made-here"));

	/* A chain whose last link leaves. */
	symlink_at("l2", "root/l1");
	symlink_at("sub/up", "root/l2");
	resolve_bad("l1/x", true, "outside builds_root");
	assert_false(exists_at("outside/x"));
}

static void
test_symlink_in_the_middle(void **state)
{
	(void)state;
	mkdir_at("root/a");
	symlink_at(T.outside, "root/a/mid");
	resolve_bad("a/mid/b/c", true, "outside builds_root");
	assert_false(exists_at("outside/b"));
	assert_false(exists_at("outside/b/c"));

	/* A dangling link to a place outside that does not exist yet. */
	symlink_at(at("outside/notyet"), "root/dangling");
	resolve_bad("dangling", true, "dangling");
	resolve_bad("dangling/x", true, "dangling");
	assert_false(exists_at("outside/notyet"));
	symlink_at("../outside/notyet2", "root/dangling2");
	resolve_bad("dangling2/x", true, "dangling2");
	assert_false(exists_at("outside/notyet2"));
}

static void
test_dotdot(void **state)
{
	(void)state;
	mkdir_at("root/a");
	resolve_bad("..", false, "outside builds_root");
	resolve_bad("../outside", false, "outside builds_root");
	resolve_bad("../newdir", true, "outside builds_root");
	assert_false(exists_at("newdir"));
	resolve_bad("a/../../outside/x", true, "");
	assert_false(exists_at("outside/x"));
}

static void
test_not_a_directory(void **state)
{
	(void)state;
	file_at("root/file");
	resolve_bad("file", false, "not a directory");
	resolve_bad("file", true, "not a directory");
	resolve_bad("file/x", true, "file/x");
	assert_false(exists_at("root/file/x"));
	/* A link inside to a file. */
	symlink_at("file", "root/flink");
	resolve_bad("flink", false, "not a directory");
}

static void
test_builds_root_itself(void **state)
{
	(void)state;
	resolve_bad(".", false, "builds_root itself");
	resolve_bad(".", true, "builds_root itself");
	resolve_bad("./", false, "builds_root itself");
	resolve_bad("", false, "builds_root itself");
	resolve_bad("/", false, "builds_root itself");
	symlink_at(".", "root/self");
	resolve_bad("self", false, "");
	symlink_at(T.root, "root/self-abs");
	resolve_bad("self-abs", true, "");
	mkdir_at("root/a");
	resolve_bad("a/..", false, "");
}

static void
test_builds_root_forms(void **state)
{
	char root[PATH_MAX + 8];

	(void)state;
	mkdir_at("root/prof");
	/* With a trailing slash, or two. */
	snprintf(root, sizeof root, "%s/", T.root);
	resolve_ok(root, "prof", false, "root/prof");
	snprintf(root, sizeof root, "%s//", T.root);
	resolve_ok(root, "out", true, "root/out");
	/* Itself reached through a symlink: the real path comes back. */
	symlink_at(T.root, "rootlink");
	resolve_ok(at("rootlink"), "prof", false, "root/prof");
	resolve_ok(at("rootlink"), "made/through/link", true, "root/made/through/link");
	/* ...and the link's own target is still "itself". */
	{
		char out[PATH_MAX], err[ERR_MAX];
		char link[PATH_MAX * 2];
		snprintf(link, sizeof link, "%s", at("rootlink"));
		assert_int_equal(path_resolve(link, ".", false, out, sizeof out, err, sizeof err), -1);
		/* A link inside the real root pointing at the real root's child is inside. */
		symlink_at(at("root/prof"), "root/p2");
		assert_int_equal(path_resolve(link, "p2", false, out, sizeof out, err, sizeof err), 0);
		assert_string_equal(out, at("root/prof"));
	}
}

static void
test_bad_root_and_small_buffer(void **state)
{
	char out[8], err[ERR_MAX];

	(void)state;
	assert_int_equal(path_resolve(at("no-such-root"), "x", true, out, sizeof out, err, sizeof err), -1);
	assert_non_null(strstr(err, "builds_root"));
	assert_false(exists_at("no-such-root"));

	mkdir_at("root/prof");
	assert_int_equal(path_resolve(T.root, "prof", false, out, sizeof out, err, sizeof err), -1);
	assert_non_null(strstr(err, "too long"));
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_existing_dirs, setup, teardown),
		cmocka_unit_test_setup_teardown(test_missing_profile, setup, teardown),
		cmocka_unit_test_setup_teardown(test_output_created, setup, teardown),
		cmocka_unit_test_setup_teardown(test_symlink_inside, setup, teardown),
		cmocka_unit_test_setup_teardown(test_symlink_outside_absolute, setup, teardown),
		cmocka_unit_test_setup_teardown(test_symlink_outside_relative, setup, teardown),
		cmocka_unit_test_setup_teardown(test_symlink_in_the_middle, setup, teardown),
		cmocka_unit_test_setup_teardown(test_dotdot, setup, teardown),
		cmocka_unit_test_setup_teardown(test_not_a_directory, setup, teardown),
		cmocka_unit_test_setup_teardown(test_builds_root_itself, setup, teardown),
		cmocka_unit_test_setup_teardown(test_builds_root_forms, setup, teardown),
		cmocka_unit_test_setup_teardown(test_bad_root_and_small_buffer, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
