/*
 * test_url.c: the Redis URLs worker.ini, --redis and REDIS_URL accept,
 * and the masked form the logs print.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "debate.h"

/* Parse s, which must succeed. */
static void
parse_ok(const char *s, struct redis_url *u)
{
	char err[ERR_MAX] = "";

	if (url_parse(s, u, err, sizeof err) != 0)
		fail_msg("url_parse(\"%s\") refused: %s", s, err);
}

/* Parse s, which must fail with an error containing frag. */
static void
parse_bad(const char *s, const char *frag)
{
	struct redis_url u;
	char err[ERR_MAX] = "";

	memset(&u, 0xa5, sizeof u);
	if (url_parse(s, &u, err, sizeof err) == 0) {
		char shown[512], *d = url_display(&u);
		snprintf(shown, sizeof shown, "%s", d);
		free(d);
		url_free(&u);
		fail_msg("url_parse(\"%s\") accepted it as %s", s ? s : "(null)", shown);
	}
	if (strstr(err, frag) == NULL)
		fail_msg("url_parse(\"%s\") error \"%s\" does not contain \"%s\"", s ? s : "(null)", err, frag);
}

static void
test_tcp_full(void **state)
{
	struct redis_url u;

	(void)state;
	parse_ok("redis://redis.example.com:6380/2", &u);
	assert_int_equal(u.kind, URL_TCP);
	assert_string_equal(u.host, "redis.example.com");
	assert_int_equal(u.port, 6380);
	assert_int_equal(u.db, 2);
	assert_null(u.user);
	assert_null(u.password);
	assert_null(u.path);
	assert_null(u.master);
	assert_int_equal(u.sentinels.n, 0);
	url_free(&u);

	parse_ok("redis://10.0.0.5:1/100000", &u);
	assert_string_equal(u.host, "10.0.0.5");
	assert_int_equal(u.port, 1);
	assert_int_equal(u.db, 100000);
	url_free(&u);

	parse_ok("redis://h:65535/0", &u);
	assert_int_equal(u.port, 65535);
	url_free(&u);
}

static void
test_tcp_defaults(void **state)
{
	struct redis_url u;

	(void)state;
	parse_ok("redis://localhost", &u);
	assert_int_equal(u.kind, URL_TCP);
	assert_string_equal(u.host, "localhost");
	assert_int_equal(u.port, 6379);
	assert_int_equal(u.db, 0);
	url_free(&u);

	parse_ok("redis://localhost/", &u);
	assert_int_equal(u.port, 6379);
	assert_int_equal(u.db, 0);
	url_free(&u);

	parse_ok("redis://localhost/5", &u);
	assert_int_equal(u.port, 6379);
	assert_int_equal(u.db, 5);
	url_free(&u);

	parse_ok("redis://127.0.0.1:6379/0", &u);	/* the worker.ini default */
	assert_string_equal(u.host, "127.0.0.1");
	url_free(&u);
}

static void
test_auth(void **state)
{
	struct redis_url u;

	(void)state;
	parse_ok("redis://:s3cret@h", &u);
	assert_null(u.user);
	assert_string_equal(u.password, "s3cret");
	assert_string_equal(u.host, "h");
	assert_int_equal(u.port, 6379);
	url_free(&u);

	parse_ok("redis://alice:s3cret@h:7000/3", &u);
	assert_string_equal(u.user, "alice");
	assert_string_equal(u.password, "s3cret");
	assert_string_equal(u.host, "h");
	assert_int_equal(u.port, 7000);
	assert_int_equal(u.db, 3);
	url_free(&u);

	/* "password@" alone, as redis-cli takes it. */
	parse_ok("redis://s3cret@h", &u);
	assert_null(u.user);
	assert_string_equal(u.password, "s3cret");
	url_free(&u);

	/* An empty password after the colon is still a (blank) password. */
	parse_ok("redis://alice:@h", &u);
	assert_string_equal(u.user, "alice");
	assert_string_equal(u.password, "");
	url_free(&u);
}

static void
test_percent_escapes(void **state)
{
	struct redis_url u;

	(void)state;
	parse_ok("redis://us%40er:p%3Ass%2F%25w%40rd@h:6380/1", &u);
	assert_string_equal(u.user, "us@er");
	assert_string_equal(u.password, "p:ss/%w@rd");
	assert_string_equal(u.host, "h");
	assert_int_equal(u.port, 6380);
	url_free(&u);

	parse_ok("redis://:%7e%7E%20@h", &u);	/* lower and upper case hex */
	assert_string_equal(u.password, "~~ ");
	url_free(&u);

	parse_ok("redis://:%41@h", &u);	/* an escape right before the '@' */
	assert_string_equal(u.password, "A");
	url_free(&u);
}

static void
test_ipv6(void **state)
{
	struct redis_url u;

	(void)state;
	parse_ok("redis://[::1]:6380", &u);
	assert_string_equal(u.host, "::1");
	assert_int_equal(u.port, 6380);
	assert_int_equal(u.db, 0);
	url_free(&u);

	parse_ok("redis://[::1]", &u);
	assert_string_equal(u.host, "::1");
	assert_int_equal(u.port, 6379);
	url_free(&u);

	parse_ok("redis://:pw@[fe80::1:2]:7000/4", &u);
	assert_string_equal(u.host, "fe80::1:2");
	assert_string_equal(u.password, "pw");
	assert_int_equal(u.port, 7000);
	assert_int_equal(u.db, 4);
	url_free(&u);
}

static void
test_unix(void **state)
{
	struct redis_url u;

	(void)state;
	parse_ok("unix:///run/redis/redis.sock?db=3", &u);
	assert_int_equal(u.kind, URL_UNIX);
	assert_string_equal(u.path, "/run/redis/redis.sock");
	assert_int_equal(u.db, 3);
	assert_null(u.host);
	url_free(&u);

	parse_ok("unix:///tmp/r.sock", &u);
	assert_string_equal(u.path, "/tmp/r.sock");
	assert_int_equal(u.db, 0);
	url_free(&u);

	parse_ok("unix://:pw@/tmp/r.sock", &u);
	assert_string_equal(u.path, "/tmp/r.sock");
	assert_string_equal(u.password, "pw");
	url_free(&u);

	parse_ok("unix://bob:pw@/tmp/r.sock?db=15", &u);
	assert_string_equal(u.user, "bob");
	assert_string_equal(u.password, "pw");
	assert_int_equal(u.db, 15);
	url_free(&u);
}

static void
test_sentinel(void **state)
{
	struct redis_url u;

	(void)state;
	parse_ok("sentinel://h1:26379,h2:26380/mymaster", &u);
	assert_int_equal(u.kind, URL_SENTINEL);
	assert_int_equal(u.sentinels.n, 2);
	assert_string_equal(u.sentinels.v[0], "h1:26379");
	assert_string_equal(u.sentinels.v[1], "h2:26380");
	assert_string_equal(u.master, "mymaster");
	assert_int_equal(u.db, 0);
	url_free(&u);

	parse_ok("sentinel://h1:26379,h2:26380/mymaster/2", &u);
	assert_int_equal(u.sentinels.n, 2);
	assert_string_equal(u.master, "mymaster");
	assert_int_equal(u.db, 2);
	url_free(&u);

	parse_ok("sentinel://:pw@h1:26379/m", &u);
	assert_int_equal(u.sentinels.n, 1);
	assert_string_equal(u.sentinels.v[0], "h1:26379");
	assert_string_equal(u.password, "pw");
	assert_string_equal(u.master, "m");
	url_free(&u);
}

static void
test_errors(void **state)
{
	(void)state;
	parse_bad(NULL, "empty");
	parse_bad("", "empty");
	parse_bad("http://h:6379", "unsupported");
	parse_bad("rediss://h", "unsupported");
	parse_bad("localhost:6379", "unsupported");
	parse_bad("REDIS://h", "unsupported");

	parse_bad("redis://", "no host");
	parse_bad("redis:///0", "no host");
	parse_bad("redis://:pw@", "no host");

	parse_bad("redis://h:0", "bad port");
	parse_bad("redis://h:70000", "bad port");
	parse_bad("redis://h:65536", "bad port");
	parse_bad("redis://h:abc", "bad port");
	parse_bad("redis://h:-1", "bad port");
	parse_bad("redis://h:", "bad port");
	parse_bad("redis://[::1]:0", "bad port");
	parse_bad("redis://[::1", "unclosed");

	parse_bad("redis://h/abc", "bad database");
	parse_bad("redis://h/-1", "bad database");
	parse_bad("redis://h/100001", "bad database");

	parse_bad("unix://tmp/r.sock", "absolute");
	parse_bad("unix://r.sock", "absolute");
	parse_bad("unix://", "absolute");
	parse_bad("unix:///tmp/r.sock?database=1", "only ?db=N");
	parse_bad("unix:///tmp/r.sock?db=x", "bad database");

	parse_bad("sentinel://h1:26379", "master");
	parse_bad("sentinel://h1:26379,h2:26380/", "master");
	parse_bad("sentinel:///m", "no sentinel host");
	parse_bad("sentinel://h1:0/m", "bad port");
	parse_bad("sentinel://h1:26379/m/x", "bad database");

	parse_bad("redis://:%4@h", "%-escape");
	parse_bad("redis://:%zz@h", "%-escape");
	parse_bad("redis://:pw%@h", "%-escape");
	parse_bad("redis://us%g0:pw@h", "%-escape");
}

/* A sentinel URL with an empty master name ("//2") names no master. */
static void
test_sentinel_empty_master(void **state)
{
	(void)state;
	parse_bad("sentinel://h1:26379//2", "master");
}

static void
test_display_masks_password(void **state)
{
	static const struct {
		const char *url, *want;
	} cases[] = {
		{ "redis://alice:hunter2@h:6380/2", "redis://***@h:6380/2" },
		{ "redis://:hunter2@h", "redis://***@h:6379/0" },
		{ "redis://h", "redis://h:6379/0" },
		{ "redis://[::1]:7000", "redis://::1:7000/0" },
		{ "unix://:hunter2@/tmp/r.sock?db=3", "unix://***@/tmp/r.sock?db=3" },
		{ "unix:///tmp/r.sock", "unix:///tmp/r.sock?db=0" },
		{ "sentinel://:hunter2@h1:26379,h2:26380/mymaster/2", "sentinel://***@h1:26379,h2:26380/mymaster/2" },
		{ "sentinel://h1:26379/m", "sentinel://h1:26379/m/0" },
	};

	(void)state;
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		struct redis_url u;
		char *d;
		parse_ok(cases[i].url, &u);
		char shown[512];
		d = url_display(&u);
		snprintf(shown, sizeof shown, "%s", d);
		free(d);
		url_free(&u);
		if (strstr(shown, "hunter2") != NULL)
			fail_msg("url_display(\"%s\") shows the password: %s", cases[i].url, shown);
		if (strcmp(shown, cases[i].want) != 0)
			fail_msg("url_display(\"%s\") = \"%s\", want \"%s\"", cases[i].url, shown, cases[i].want);
	}
}

/* The userinfo ends at the last '@': a password may hold '@' and '/'. */
static void
test_password_with_at(void **state)
{
	struct redis_url u;

	(void)state;
	parse_ok("redis://:p@ss@h:6380/1", &u);
	assert_null(u.user);
	assert_string_equal(u.password, "p@ss");
	assert_string_equal(u.host, "h");
	assert_int_equal(u.port, 6380);
	assert_int_equal(u.db, 1);
	url_free(&u);

	parse_ok("redis://alice:p@ss/w@rd@h/2", &u);
	assert_string_equal(u.user, "alice");
	assert_string_equal(u.password, "p@ss/w@rd");
	assert_string_equal(u.host, "h");
	assert_int_equal(u.db, 2);
	url_free(&u);

	parse_ok("sentinel://:p@w@h1:1,h2:2/m/3", &u);
	assert_string_equal(u.password, "p@w");
	assert_int_equal(u.sentinels.n, 2);
	assert_string_equal(u.sentinels.v[0], "h1:1");
	assert_string_equal(u.master, "m");
	assert_int_equal(u.db, 3);
	url_free(&u);

	/* unix://: the userinfo ends at the last "@/"; the path may hold '@'. */
	parse_ok("unix://:p@w@/run/redis@main/r.sock?db=2", &u);
	assert_string_equal(u.password, "p@w");
	assert_string_equal(u.path, "/run/redis@main/r.sock");
	assert_int_equal(u.db, 2);
	url_free(&u);

	parse_ok("unix:///run/redis@main/r.sock", &u);
	assert_null(u.password);
	assert_string_equal(u.path, "/run/redis@main/r.sock");
	url_free(&u);
}

/* No error message shows the password, or any part of it. */
static void
test_errors_hide_password(void **state)
{
	static const char *bad[] = {
		"http://u:hun@ter2@h:6379", "rediss://:hun@ter2@h", "localhost:hun@ter2@h",
		"REDIS://:hun@ter2@h", "redis://:hun@ter2@", "redis://:hun@ter2@/0",
		"redis://:hun@ter2@h:0", "redis://:hun@ter2@h:abc", "redis://:hun@ter2@h:",
		"redis://:hun@ter2@[::1", "redis://:hun@ter2@[::1]:0", "redis://:hun@ter2@h/abc",
		"redis://:hun@ter2/x@h/abc", "redis://:hun@ter2@h/100001",
		"unix://:hun@ter2@tmp/r.sock", "unix://:hun@ter2@/tmp/r.sock?database=1",
		"unix://:hun@ter2@/tmp/r.sock?db=x", "sentinel://:hun@ter2@h1:26379",
		"sentinel://:hun@ter2@h1:26379/", "sentinel://:hun@ter2@/m",
		"sentinel://:hun@ter2@h1:0/m", "sentinel://:hun@ter2@h1:1/m/x",
		"sentinel://:hun@ter2@h1:1//2", "redis://:hun@ter2%zz@h", "redis://u%g0:hun@ter2@h",
	};

	(void)state;
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		struct redis_url u;
		char err[ERR_MAX] = "";
		if (url_parse(bad[i], &u, err, sizeof err) == 0) {
			url_free(&u);
			fail_msg("url_parse(\"%s\") accepted it", bad[i]);
		}
		if (err[0] == '\0' || strstr(err, "hun") != NULL || strstr(err, "ter2") != NULL)
			fail_msg("url_parse(\"%s\") error shows the password: %s", bad[i], err);
	}
}

/* url_redact() masks the userinfo of any string, parsable or not. */
static void
test_redact(void **state)
{
	static const struct {
		const char *in, *want;
	} cases[] = {
		{ "http://u:pw@h:1/0", "http://***@h:1/0" },
		{ "redis://:p@w@h", "redis://***@h" },
		{ "pw@host", "***@host" },
		{ "redis://h:6379/0", "redis://h:6379/0" },
		{ "", "" },
	};

	(void)state;
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		char *r = url_redact(cases[i].in);
		char shown[256];
		snprintf(shown, sizeof shown, "%s", r);
		free(r);
		if (strcmp(shown, cases[i].want) != 0)
			fail_msg("url_redact(\"%s\") = \"%s\", want \"%s\"", cases[i].in, shown, cases[i].want);
	}
}

static void
test_free_zeroes(void **state)
{
	struct redis_url u;

	(void)state;
	parse_ok("sentinel://u:p@h1:1,h2:2/m/1", &u);
	url_free(&u);
	assert_null(u.user);
	assert_null(u.password);
	assert_null(u.master);
	assert_int_equal(u.sentinels.n, 0);
	url_free(&u);	/* twice is harmless */
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_tcp_full),
		cmocka_unit_test(test_tcp_defaults),
		cmocka_unit_test(test_auth),
		cmocka_unit_test(test_percent_escapes),
		cmocka_unit_test(test_ipv6),
		cmocka_unit_test(test_unix),
		cmocka_unit_test(test_sentinel),
		cmocka_unit_test(test_errors),
		cmocka_unit_test(test_sentinel_empty_master),
		cmocka_unit_test(test_display_masks_password),
		cmocka_unit_test(test_password_with_at),
		cmocka_unit_test(test_errors_hide_password),
		cmocka_unit_test(test_redact),
		cmocka_unit_test(test_free_zeroes),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
