/*
 * test_collect.c: the artifact walk of worker/collect.c on real trees
 * (regular files, symlinks, a FIFO, a socket, a sparse file, deep and
 * wide directories), driven by a real libev loop, and collect_outcome().
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cmocka.h>

#include "job.h"
#include "unit.h"

struct worker *wk;

static int collected;

/* A stand-in for rconnqueue.c: the cancel poll needs Redis (wk->cmd is NULL here). */
void
rconn_send(struct rconn *rc, enum rq_kind kind, rq_cb *cb, void *arg, int argc, const char **argv,
    const size_t *argvlen)
{
	(void)rc, (void)kind, (void)cb, (void)arg, (void)argc, (void)argv, (void)argvlen;
	fail();
}

/* The done() callback: note it. */
static void
test_done(struct job *j)
{
	(void)j;
	collected++;
}

/* Write a file below dir. */
static void
put(const char *dir, const char *name, const char *data)
{
	char *p = xasprintf("%s/%s", dir, name);
	int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0644);

	assert_true(fd >= 0);
	assert_int_equal(write(fd, data, strlen(data)), (ssize_t)strlen(data));
	close(fd);
	free(p);
}

/* mkdir below dir. */
static void
mkd(const char *dir, const char *name)
{
	char *p = xasprintf("%s/%s", dir, name);

	assert_int_equal(mkdir(p, 0755), 0);
	free(p);
}

/* Run a walk of dir to its end. */
static struct collect *
walk(const char *dir, struct job *j)
{
	struct collect *co;

	collected = 0;
	co = collect_start(dir, test_done, j);
	while (collected == 0)
		ev_run(EV_DEFAULT, EVRUN_ONCE);
	assert_int_equal(collected, 1);
	return co;
}

/* A fresh worker config and temporary directory per test. */
static int
setup(void **state)
{
	static struct config conf;
	char tmpl[] = "/tmp/debate-collect-XXXXXX";

	wk = xcalloc(1, sizeof *wk);
	config_defaults(&conf);
	wk->conf = &conf;
	keys_init(&wk->keys, "t");
	assert_non_null(mkdtemp(tmpl));
	*state = xstrdup(tmpl);
	return 0;
}

/* Remove it all. */
static int
teardown(void **state)
{
	unit_rmtree(*state);
	free(*state);
	keys_free(&wk->keys);
	config_free(wk->conf);
	free(wk);
	return 0;
}

/* Only regular files are listed, with sizes and sha256, sorted by name. */
static void
test_regular_files_only(void **state)
{
	const char *d = *state;
	struct job j = { 0 };
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct collect *co;
	char *p;
	int s, fd;

	put(d, "b.iso", "abc");
	mkd(d, "sub");
	put(d, "sub/a.txt", "");
	p = xasprintf("%s/dev", d);
	assert_int_equal(symlink("/dev", p), 0);
	free(p);
	p = xasprintf("%s/zero", d);
	assert_int_equal(symlink("/dev/zero", p), 0);
	free(p);
	p = xasprintf("%s/fifo", d);
	assert_int_equal(mkfifo(p, 0644), 0);
	free(p);
	snprintf(sa.sun_path, sizeof sa.sun_path, "%s/sock", d);
	s = socket(AF_UNIX, SOCK_STREAM, 0);
	assert_int_equal(bind(s, (struct sockaddr *)&sa, sizeof sa), 0);
	p = xasprintf("%s/sparse", d);
	fd = open(p, O_WRONLY | O_CREAT, 0644);
	assert_int_equal(ftruncate(fd, 3 << 20), 0);
	close(fd);
	free(p);

	co = walk(d, &j);
	close(s);
	assert_null(collect_error(co));
	assert_int_equal(collect_count(co), 3);
	assert_string_equal(collect_get(co, 0)->name, "b.iso");
	assert_int_equal(collect_get(co, 0)->size, 3);
	assert_string_equal(collect_get(co, 0)->sha256,
	    "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
	assert_string_equal(collect_get(co, 1)->name, "sparse");
	assert_int_equal(collect_get(co, 1)->size, 3 << 20);
	assert_string_equal(collect_get(co, 2)->name, "sub/a.txt");
	assert_string_equal(collect_get(co, 2)->sha256,
	    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
	collect_free(co);
}

/* Each cap fails the walk with a message naming the key; the list is dropped. */
static void
test_caps(void **state)
{
	const char *d = *state;
	struct config *c = (struct config *)wk->conf;
	struct job j = { 0 };
	struct collect *co;

	put(d, "a", "1");
	put(d, "b", "22");
	put(d, "c", "333");
	c->collect_max_files = 2;
	co = walk(d, &j);
	assert_int_equal(collect_count(co), 0);
	assert_string_equal(collect_error(co), "output has more than 2 files (collect_max_files)");
	collect_free(co);

	c->collect_max_files = 10;
	c->collect_max_bytes = 5;
	co = walk(d, &j);
	assert_int_equal(collect_count(co), 0);
	assert_string_equal(collect_error(co), "output has more than 5 B of files (collect_max_bytes)");
	collect_free(co);

	c->collect_max_bytes = 6;
	co = walk(d, &j);
	assert_null(collect_error(co));
	assert_int_equal(collect_count(co), 3);
	collect_free(co);

	mkd(d, "x");
	mkd(d, "x/y");
	mkd(d, "x/y/z");
	put(d, "x/y/z/f", "");
	c->collect_max_depth = 2;
	co = walk(d, &j);
	assert_int_equal(collect_count(co), 0);
	assert_string_equal(collect_error(co),
	    "output has directories nested more than 2 deep (collect_max_depth)");
	collect_free(co);
	c->collect_max_depth = 3;
	co = walk(d, &j);
	assert_null(collect_error(co));
	assert_int_equal(collect_count(co), 4);
	assert_string_equal(collect_get(co, 3)->name, "x/y/z/f");
	collect_free(co);
}

/* The output dir swapped for a symlink, or missing. */
static void
test_output_dir(void **state)
{
	const char *d = *state;
	struct job j = { 0 };
	struct collect *co;
	char *p = xasprintf("%s/out", d), *q = xasprintf("%s/real", d);

	mkd(d, "real");
	put(d, "real/f", "x");
	assert_int_equal(symlink(q, p), 0);
	co = walk(p, &j);
	assert_int_equal(collect_count(co), 0);
	assert_non_null(collect_error(co));
	assert_non_null(strstr(collect_error(co), "reading the output directory"));
	collect_free(co);
	co = walk(q, &j);
	assert_int_equal(collect_count(co), 1);
	collect_free(co);
	unlink(p);
	co = walk(p, &j);	/* gone: nothing to list */
	assert_null(collect_error(co));
	assert_int_equal(collect_count(co), 0);
	collect_free(co);
	co = walk("", &j);
	assert_null(collect_error(co));
	collect_free(co);
	free(p);
	free(q);
}

/* Many files in many slices: all listed, the walk bounded per slice. */
static void
test_many_files(void **state)
{
	const char *d = *state;
	struct job j = { 0 };
	struct collect *co;
	char name[32];

	mkd(d, "w");
	for (int i = 0; i < 1000; i++) {
		snprintf(name, sizeof name, "w/f%04d", i);
		put(d, name, name);
	}
	co = walk(d, &j);
	assert_null(collect_error(co));
	assert_int_equal(collect_count(co), 1000);
	assert_string_equal(collect_get(co, 999)->name, "w/f0999");
	assert_int_equal(collect_get(co, 999)->size, 7);
	collect_free(co);
}

/* A pipe watcher that never drains: always pending, like a job flooding its output. */
static void
busy_cb(EV_P_ ev_io *w, int revents)
{
	(void)loop;
	(void)revents;
	(*(int *)w->data)++;
}

/*
 * The walk gets its slice every loop turn even while another watcher is
 * pending on every turn (an idle watcher of the same priority would never
 * run); and the busy watcher still gets its turns meanwhile.
 */
static void
test_not_starved(void **state)
{
	const char *d = *state;
	struct job j = { 0 };
	struct collect *co;
	ev_io busy;
	int p[2], turns = 0, busy_calls = 0, fd;
	char *path = xasprintf("%s/big", d);

	fd = open(path, O_WRONLY | O_CREAT, 0644);
	assert_int_equal(ftruncate(fd, 8 << 20), 0);
	close(fd);
	free(path);
	assert_int_equal(pipe(p), 0);
	assert_int_equal(write(p[1], "x", 1), 1);
	ev_io_init(&busy, busy_cb, p[0], EV_READ);
	busy.data = &busy_calls;
	ev_io_start(EV_DEFAULT, &busy);
	collected = 0;
	co = collect_start(d, test_done, &j);
	while (collected == 0 && turns < 1000) {
		ev_run(EV_DEFAULT, EVRUN_ONCE);
		turns++;
	}
	ev_io_stop(EV_DEFAULT, &busy);
	close(p[0]);
	close(p[1]);
	assert_int_equal(collected, 1);
	assert_true(turns <= 16);	/* 8 slices of 1 MiB and the end */
	assert_true(busy_calls >= turns - 1);
	assert_int_equal(collect_count(co), 1);
	assert_int_equal(collect_get(co, 0)->size, 8 << 20);
	collect_free(co);
}

/* The status once collected. */
static void
test_outcome(void **state)
{
	const char *d = *state;
	struct config *c = (struct config *)wk->conf;
	struct job j = { 0 };
	struct collect *co;
	char err[ERR_MAX];

	assert_int_equal(collect_outcome(NULL, ST_FAILED, err, sizeof err), ST_FAILED);
	put(d, "a", "1");
	put(d, "b", "2");
	co = walk(d, &j);
	err[0] = '\0';
	assert_int_equal(collect_outcome(co, ST_SUCCEEDED, err, sizeof err), ST_SUCCEEDED);
	assert_string_equal(err, "");
	collect_free(co);

	c->collect_max_files = 1;
	co = walk(d, &j);
	err[0] = '\0';
	assert_int_equal(collect_outcome(co, ST_SUCCEEDED, err, sizeof err), ST_ERROR);
	assert_string_equal(err, "output has more than 1 files (collect_max_files)");
	snprintf(err, sizeof err, "build exited with code 3");
	assert_int_equal(collect_outcome(co, ST_FAILED, err, sizeof err), ST_FAILED);
	assert_string_equal(err,
	    "build exited with code 3; output has more than 1 files (collect_max_files)");
	collect_free(co);

	/* A cancel stops the walk at its next slice, whatever it was doing. */
	c->collect_max_files = 100;
	collected = 0;
	co = collect_start(d, test_done, &j);
	collect_cancel(co);
	while (collected == 0)
		ev_run(EV_DEFAULT, EVRUN_ONCE);
	assert_int_equal(collect_count(co), 0);
	err[0] = '\0';
	assert_int_equal(collect_outcome(co, ST_SUCCEEDED, err, sizeof err), ST_CANCELLED);
	assert_string_equal(err, "cancelled while collecting the artifacts");
	collect_cancel(co);	/* once finished: nothing */
	collect_free(co);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_regular_files_only, setup, teardown),
		cmocka_unit_test_setup_teardown(test_caps, setup, teardown),
		cmocka_unit_test_setup_teardown(test_output_dir, setup, teardown),
		cmocka_unit_test_setup_teardown(test_many_files, setup, teardown),
		cmocka_unit_test_setup_teardown(test_not_starved, setup, teardown),
		cmocka_unit_test_setup_teardown(test_outcome, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
