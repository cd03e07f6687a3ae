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

static void
rename_at(const char *from, const char *to)
{
	char f[PATH_MAX * 2];

	snprintf(f, sizeof f, "%s", at(from));	/* at() has one buffer */
	if (rename(f, at(to)) != 0)
		fail_msg("rename %s -> %s: %s", f, at(to), strerror(errno));
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

/*
 * Symlinks are refused even when they stay inside (the contract changed:
 * a link that stays inside now may lead outside a moment later).
 */
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
	resolve_bad("abs", false, "\"abs\" is a symlink");
	resolve_bad("abs/sub", false, "\"abs\" is a symlink");
	resolve_bad("links/rel/sub", false, "\"links/rel\" is a symlink");
	resolve_bad("chain/sub", false, "\"chain\" is a symlink");
	/* Nothing is created through an inside link either. */
	resolve_bad("links/rel/new/dir", true, "\"links/rel\" is a symlink");
	assert_false(exists_at("root/real/new"));
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
	resolve_bad("flink", false, "\"flink\" is a symlink");
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
		/* A link inside the real root, even to the real root's child, is refused. */
		symlink_at(at("root/prof"), "root/p2");
		assert_int_equal(path_resolve(link, "p2", false, out, sizeof out, err, sizeof err), -1);
		assert_non_null(strstr(err, "symlink"));
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

/*
 * A symlink at every depth of a five-deep path, to the outside, to "/",
 * and to a directory inside: always refused, naming the link, and nothing
 * made outside or through the link.
 */
static void
test_symlink_every_depth(void **state)
{
	static const char *const comps[] = { "a", "b", "c", "d", "e" };
	char rel[64], prefix[64], link[PATH_MAX * 2], frag[96];

	(void)state;
	mkdir_at("root/in");
	for (int depth = 0; depth < 5; depth++) {
		for (int kind = 0; kind < 3; kind++) {
			const char *target = kind == 0 ? T.outside : kind == 1 ? "/" : "../in";
			size_t n = 0;
			/* real directories above the link, the link at `depth` */
			snprintf(prefix, sizeof prefix, "t%d%d", depth, kind);
			snprintf(link, sizeof link, "root/%s", prefix);
			mkdir_at(link);
			for (int i = 0; i < depth; i++) {
				n = strlen(prefix);
				snprintf(prefix + n, sizeof prefix - n, "/%s", comps[i]);
				snprintf(link, sizeof link, "root/%s", prefix);
				mkdir_at(link);
			}
			n = strlen(prefix);
			snprintf(prefix + n, sizeof prefix - n, "/%s", comps[depth]);
			snprintf(link, sizeof link, "root/%s", prefix);
			symlink_at(kind == 2 && depth > 0 ? "/nonexistent-never" : target, link);
			snprintf(frag, sizeof frag, "\"%s\" is a symlink", prefix);
			/* the link itself, and paths below it, created or not */
			resolve_bad(prefix, false, frag);
			resolve_bad(prefix, true, frag);
			snprintf(rel, sizeof rel, "%s/x/y", prefix);
			resolve_bad(rel, true, frag);
			resolve_bad(rel, false, frag);
			assert_false(exists_at("outside/x"));
			assert_false(exists_at("root/in/x"));
		}
	}
	/* The outside tree stayed empty. */
	assert_int_equal(rmdir(T.outside), 0);
}

/* An absolute rel is taken relative to root: never the host's directory. */
static void
test_absolute_stays_below(void **state)
{
	(void)state;
	resolve_bad("/etc", false, "No such file");
	resolve_bad("//etc/", false, "No such file");
	resolve_ok(T.root, "/tmp/made", true, "root/tmp/made");
	assert_true(exists_at("root/tmp/made"));
}

/* payload_decode() refuses a NUL byte, "..", and an absolute path outside, before any lookup. */
static void
test_decode_refuses_nul_dotdot_absolute(void **state)
{
	static const struct {
		const char *profile;
		size_t len;
		const char *frag;
	} cases[] = {
		{ "p\0/../../etc", 12, "NUL" },
		{ "p\0", 2, "NUL" },
		{ "a/../../outside", 15, ".." },
		{ "..", 2, ".." },
		{ "/etc", 4, "outside builds_root" },
		{ "/", 1, "outside builds_root" },
	};
	struct config c;

	(void)state;
	config_defaults(&c);
	free(c.builds_root);
	c.builds_root = xstrdup(T.root);
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		msgpack_sbuffer sb;
		msgpack_packer pk;
		struct job_spec js;
		char err[ERR_MAX];
		msgpack_sbuffer_init(&sb);
		msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
		msgpack_pack_map(&pk, 3);
		mp_kv_str(&pk, "id", "j");
		mp_str(&pk, "profile");
		mp_strn(&pk, cases[i].profile, cases[i].len);
		mp_kv_str(&pk, "output", "o");
		assert_int_equal(payload_decode(sb.data, sb.size, &c, &js, err, sizeof err), REFUSE_PATH);
		if (strstr(err, cases[i].frag) == NULL)
			fail_msg("case %zu: \"%s\" does not contain \"%s\"", i, err, cases[i].frag);
		payload_free(&js);
		msgpack_sbuffer_destroy(&sb);
	}
	config_free(&c);
	assert_false(exists_at("root/o"));
}

static int planted;

/* After the resolver makes root/a/b, swap it for a symlink to the outside. */
static void
plant_symlink(int dirfd, const char *name)
{
	if (strcmp(name, "b") != 0)
		return;
	assert_int_equal(unlinkat(dirfd, name, AT_REMOVEDIR), 0);
	assert_int_equal(symlinkat(T.outside, dirfd, name), 0);
	planted++;
}

/* The same, but the real directory moves away first (rename, as a build may). */
static void
plant_after_rename(int dirfd, const char *name)
{
	if (strcmp(name, "b") != 0)
		return;
	assert_int_equal(renameat(dirfd, name, dirfd, "b.moved"), 0);
	assert_int_equal(symlinkat(T.outside, dirfd, name), 0);
	planted++;
}

/*
 * A symlink planted between the mkdirat() of a component and its open:
 * the open does not follow it, the path is refused, nothing is made
 * outside.
 */
static void
test_created_dir_swapped_for_symlink(void **state)
{
	(void)state;
	mkdir_at("root/a");
	planted = 0;
	path_after_mkdir = plant_symlink;
	resolve_bad("a/b/c/d", true, "\"a/b\" is a symlink");
	path_after_mkdir = plant_after_rename;
	assert_int_equal(unlinkat(AT_FDCWD, at("root/a/b"), 0), 0);
	resolve_bad("a/b/c/d", true, "\"a/b\" is a symlink");
	path_after_mkdir = NULL;
	assert_int_equal(planted, 2);
	assert_false(exists_at("outside/c"));
	assert_false(exists_at("root/a/b.moved/c"));
	assert_int_equal(rmdir(T.outside), 0);
}

/*
 * What path_open() holds is the directory, not its name: after the name
 * is swapped for a symlink to the outside, writing through the held
 * descriptor still lands in the directory, which stays below the root.
 */
static void
test_held_dir_survives_a_swap(void **state)
{
	struct path_dir pd;
	char err[ERR_MAX], file[PATH_MAX];
	int fd;

	(void)state;
	mkdir_at("root/x");
	assert_int_equal(path_open(T.root, "x/sub", true, &pd, err, sizeof err), 0);
	assert_string_equal(pd.real, at("root/x/sub"));
	rename_at("root/x/sub", "root/x/moved");
	symlink_at(T.outside, "root/x/sub");
	snprintf(file, sizeof file, "/proc/self/fd/%d/iso", pd.fd);
	assert_true((fd = open(file, O_WRONLY | O_CREAT | O_EXCL, 0644)) >= 0);
	close(fd);
	assert_true(exists_at("root/x/moved/iso"));
	assert_false(exists_at("outside/iso"));
	path_close(&pd);
	/* And opening the name again now refuses the link. */
	resolve_bad("x/sub", true, "\"x/sub\" is a symlink");
}

/* path_nested(): the same directory, one inside the other, or neither. */
static void
test_nested(void **state)
{
	struct path_dir a, ab, abc, ac, b, a2;
	char err[ERR_MAX];

	(void)state;
	assert_int_equal(path_open(T.root, "a", true, &a, err, sizeof err), 0);
	assert_int_equal(path_open(T.root, "a/b", true, &ab, err, sizeof err), 0);
	assert_int_equal(path_open(T.root, "a/b/c", true, &abc, err, sizeof err), 0);
	assert_int_equal(path_open(T.root, "a/c", true, &ac, err, sizeof err), 0);
	assert_int_equal(path_open(T.root, "b", true, &b, err, sizeof err), 0);
	assert_int_equal(path_open(T.root, "./a//", false, &a2, err, sizeof err), 0);
	assert_true(path_nested(&a, &a2));
	assert_true(path_nested(&a, &abc));
	assert_true(path_nested(&abc, &a));
	assert_true(path_nested(&ab, &abc));
	assert_false(path_nested(&ab, &ac));
	assert_false(path_nested(&abc, &ac));
	assert_false(path_nested(&a, &b));
	/* Moving a directory moves what is nested in it, once the chain is found again. */
	rename_at("root/a/b", "root/b/b");
	assert_true(path_nested(&abc, &a));	/* as of path_open() */
	path_refresh(&abc, NULL);
	assert_true(path_nested(&abc, &b));
	assert_false(path_nested(&abc, &a));
	assert_true(path_nested(&ab, &a));	/* not refreshed yet: its old chain */
	path_refresh(&ab, NULL);
	assert_true(path_nested(&ab, &b) && !path_nested(&ab, &a));
	path_close(&a);
	path_close(&ab);
	path_close(&abc);
	path_close(&ac);
	path_close(&b);
	path_close(&a2);
	path_close(&a2);	/* twice is fine */
}

/* Whether pd's chain is the one a walk from its directory to "/" finds. */
static void
assert_whole_chain(const struct path_dir *pd)
{
	struct path_dir full;
	char err[ERR_MAX];

	assert_int_equal(path_from_fd(pd->fd, NULL, &full, err, sizeof err), 0);
	assert_int_equal(pd->depth, full.depth);
	assert_memory_equal(pd->chain, full.chain, full.depth * sizeof *full.chain);
	path_close(&full);
}

/*
 * A chain found with builds_root held (path_root(), path_open_at(), the
 * refresh) walks down to the root and copies the root's chain for the
 * rest: it must be the whole chain to "/", the same as a walk all the
 * way up, so that a held chain still meets a directory above builds_root
 * after the operator points builds_root's symlink elsewhere (the
 * registry's lines, from other workers, are never found again).  Here the
 * job holding data/y2026/cur/x/out is still running when builds_root
 * (a symlink) is pointed from data/y2026/cur to data: a new job's output
 * "y2026", which holds the running output, must be found to overlap it.
 * (A chain cut at builds_root missed that.)
 */
static void
test_chain_whole_across_a_root_repoint(void **state)
{
	struct path_dir r1, r2, out, cand;
	char err[ERR_MAX], link[PATH_MAX];

	(void)state;
	mkdir_at("data");
	mkdir_at("data/y2026");
	mkdir_at("data/y2026/cur");
	snprintf(link, sizeof link, "%s", at("builds"));
	symlink_at(at("data/y2026/cur"), "builds");
	assert_int_equal(path_root(link, &r1, err, sizeof err), 0);
	assert_int_equal(path_open_at(&r1, "x/out", true, &out, err, sizeof err), 0);
	assert_int_equal(unlink(link), 0);
	symlink_at(at("data"), "builds");
	assert_int_equal(path_root(link, &r2, err, sizeof err), 0);
	assert_int_equal(path_open_at(&r2, "y2026", false, &cand, err, sizeof err), 0);
	/* As another worker's registry line holds it: found once, never refreshed. */
	assert_true(path_nested(&cand, &out));
	assert_true(path_nested(&out, &cand));
	/* As this worker holds it: refreshed at each take, below the root of the day. */
	path_refresh(&out, &r2);
	assert_true(path_nested(&cand, &out));
	assert_true(path_nested(&out, &cand));
	assert_whole_chain(&r1);
	assert_whole_chain(&r2);
	assert_whole_chain(&cand);
	assert_whole_chain(&out);
	path_close(&cand);
	path_close(&out);
	path_close(&r1);
	path_close(&r2);
}

/* Each test runs with openat2 (when the kernel has it), then with the fallback walk. */
static int
setup_openat2(void **state)
{
	path_no_openat2 = false;
	return setup(state);
}

static int
setup_walk(void **state)
{
	path_no_openat2 = true;
	return setup(state);
}

#define BOTH(f) { "openat2: " #f, f, setup_openat2, teardown, NULL }, { "walk: " #f, f, setup_walk, teardown, NULL }

int
main(void)
{
	const struct CMUnitTest tests[] = {
		BOTH(test_existing_dirs),
		BOTH(test_missing_profile),
		BOTH(test_output_created),
		BOTH(test_symlink_inside),
		BOTH(test_symlink_outside_absolute),
		BOTH(test_symlink_outside_relative),
		BOTH(test_symlink_in_the_middle),
		BOTH(test_dotdot),
		BOTH(test_not_a_directory),
		BOTH(test_builds_root_itself),
		BOTH(test_builds_root_forms),
		BOTH(test_bad_root_and_small_buffer),
		BOTH(test_symlink_every_depth),
		BOTH(test_absolute_stays_below),
		BOTH(test_decode_refuses_nul_dotdot_absolute),
		BOTH(test_created_dir_swapped_for_symlink),
		BOTH(test_held_dir_survives_a_swap),
		BOTH(test_nested),
		BOTH(test_chain_whole_across_a_root_repoint),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
