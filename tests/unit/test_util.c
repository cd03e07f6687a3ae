/*
 * test_util.c: the parsers every worker.ini line and job field goes
 * through (sizes, seconds, integers, booleans, job ids), the human byte
 * formatter, string vectors and key names.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "debate.h"

/* parse_size on s must succeed with want. */
static void
size_ok(const char *s, uint64_t want)
{
	char err[ERR_MAX] = "";
	uint64_t v = 12345;

	if (parse_size(s, &v, err, sizeof err) != 0)
		fail_msg("parse_size(\"%s\") refused: %s", s, err);
	if (v != want)
		fail_msg("parse_size(\"%s\") = %llu, want %llu", s, (unsigned long long)v,
		    (unsigned long long)want);
}

/* parse_size on s must fail, leave *out alone and say something containing frag. */
static void
size_bad(const char *s, const char *frag)
{
	char err[ERR_MAX] = "";
	uint64_t v = 777;

	if (parse_size(s, &v, err, sizeof err) == 0)
		fail_msg("parse_size(\"%s\") accepted it as %llu", s, (unsigned long long)v);
	assert_int_equal(v, 777);
	if (strstr(err, frag) == NULL)
		fail_msg("parse_size(\"%s\") error \"%s\" does not contain \"%s\"", s, err, frag);
}

static void
test_parse_size_valid(void **state)
{
	(void)state;
	size_ok("0", 0);
	size_ok("1024", 1024);
	size_ok("1k", 1024);
	size_ok("1K", 1024);
	size_ok("512m", 512ULL << 20);
	size_ok("512M", 512ULL << 20);
	size_ok("8g", 8ULL << 30);
	size_ok("2t", 2ULL << 40);
	size_ok("8gb", 8ULL << 30);
	size_ok("8GB", 8ULL << 30);
	size_ok("4kB", 4096);
	size_ok("18446744073709551615", UINT64_MAX);
	size_ok("16777215t", 16777215ULL << 40);
}

static void
test_parse_size_invalid(void **state)
{
	(void)state;
	size_bad("", "is not a size");
	size_bad("-1", "is not a size");
	size_bad("1.5g", "is not a size");
	size_bad("12q", "\"12q\"");
	size_bad("12q", "is not a size");
	size_bad("g", "is not a size");
	size_bad(" 1", "is not a size");
	size_bad("1 g", "is not a size");
	size_bad("1kk", "is not a size");
	size_bad("1gbb", "is not a size");
	size_bad("8b", "is not a size");	/* "b" only after a unit */
	size_bad("0x10", "is not a size");
	/* Overflow: of strtoull, and of the multiplication. */
	size_bad("18446744073709551616", "too large");
	size_bad("99999999999999999999999", "too large");
	size_bad("16777216t", "too large");
	size_bad("17179869184g", "too large");
}

/* parse_seconds on s must give want. */
static void
secs_ok(const char *s, double want)
{
	char err[ERR_MAX] = "";
	double v = -1;

	if (parse_seconds(s, &v, err, sizeof err) != 0)
		fail_msg("parse_seconds(\"%s\") refused: %s", s, err);
	if (v != want)
		fail_msg("parse_seconds(\"%s\") = %g, want %g", s, v, want);
}

/* parse_seconds on s must fail naming s. */
static void
secs_bad(const char *s)
{
	char err[ERR_MAX] = "";
	double v = 42;

	if (parse_seconds(s, &v, err, sizeof err) == 0)
		fail_msg("parse_seconds(\"%s\") accepted it as %g", s, v);
	assert_true(v == 42);
	if (strstr(err, "is not a number of seconds") == NULL)
		fail_msg("parse_seconds(\"%s\") error: \"%s\"", s, err);
	if (*s != '\0' && strstr(err, s) == NULL)
		fail_msg("parse_seconds(\"%s\") error does not quote the value: \"%s\"", s, err);
}

static void
test_parse_seconds(void **state)
{
	(void)state;
	secs_ok("0", 0);
	secs_ok("5", 5);
	secs_ok("0.2", 0.2);
	secs_ok("1200", 1200);
	secs_ok("1e3", 1000);
	secs_ok("1e9", 1e9);
	secs_bad("");
	secs_bad("-1");
	secs_bad("-0.5");
	secs_bad("abc");
	secs_bad("10s");
	secs_bad("1.5.2");
	secs_bad("inf");
	secs_bad("nan");
	secs_bad("1e10");
	secs_bad("1e400");
}

static void
test_parse_int(void **state)
{
	char err[ERR_MAX];
	long long v;

	(void)state;
	assert_int_equal(parse_int("1", 1, 1024, &v, err, sizeof err), 0);
	assert_int_equal(v, 1);
	assert_int_equal(parse_int("1024", 1, 1024, &v, err, sizeof err), 0);
	assert_int_equal(v, 1024);
	assert_int_equal(parse_int("-5", -10, 10, &v, err, sizeof err), 0);
	assert_int_equal(v, -5);
	assert_int_equal(parse_int("9223372036854775807", 0, INT64_MAX, &v, err, sizeof err), 0);
	assert_true(v == INT64_MAX);

	v = 99;
	assert_int_equal(parse_int("0", 1, 1024, &v, err, sizeof err), -1);
	assert_string_equal(err, "0 is out of range (1 to 1024)");
	assert_int_equal(v, 99);
	assert_int_equal(parse_int("1025", 1, 1024, &v, err, sizeof err), -1);
	assert_string_equal(err, "1025 is out of range (1 to 1024)");
	assert_int_equal(parse_int("-11", -10, 10, &v, err, sizeof err), -1);
	assert_non_null(strstr(err, "out of range"));

	assert_int_equal(parse_int("", 0, 10, &v, err, sizeof err), -1);
	assert_non_null(strstr(err, "is not an integer"));
	assert_int_equal(parse_int("abc", 0, 10, &v, err, sizeof err), -1);
	assert_string_equal(err, "\"abc\" is not an integer");
	assert_int_equal(parse_int("1x", 0, 10, &v, err, sizeof err), -1);
	assert_int_equal(parse_int("1.0", 0, 10, &v, err, sizeof err), -1);
	assert_int_equal(parse_int("0x10", 0, 100, &v, err, sizeof err), -1);
	assert_int_equal(parse_int("9223372036854775808", 0, INT64_MAX, &v, err, sizeof err), -1);
	assert_non_null(strstr(err, "is not an integer"));
	assert_int_equal(parse_int("-9223372036854775809", INT64_MIN, 0, &v, err, sizeof err), -1);
	assert_int_equal(v, 99);
}

static void
test_parse_bool(void **state)
{
	static const char *yes[] = { "yes", "YES", "Yes", "true", "TRUE", "on", "On", "1" };
	static const char *no[] = { "no", "NO", "false", "False", "off", "OFF", "0" };
	static const char *bad[] = { "", "2", "y", "n", "yess", "enable", " yes", "yes ", "-1", "01" };
	bool b;

	(void)state;
	for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++) {
		b = false;
		if (parse_bool(yes[i], &b) != 0 || !b)
			fail_msg("parse_bool(\"%s\") is not true", yes[i]);
	}
	for (size_t i = 0; i < sizeof no / sizeof no[0]; i++) {
		b = true;
		if (parse_bool(no[i], &b) != 0 || b)
			fail_msg("parse_bool(\"%s\") is not false", no[i]);
	}
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		b = true;
		if (parse_bool(bad[i], &b) == 0)
			fail_msg("parse_bool(\"%s\") accepted", bad[i]);
		assert_true(b);
	}
}

/* id_valid over the whole NUL-terminated s. */
static bool
idv(const char *s)
{
	return id_valid(s, strlen(s));
}

static void
test_id_valid(void **state)
{
	char id[ID_MAX + 2];

	(void)state;
	assert_true(idv("a"));
	assert_true(idv("Z"));
	assert_true(idv("0"));
	assert_true(idv("build-42"));
	assert_true(idv("a_b.c-d"));
	assert_true(idv("9.-_"));
	assert_true(idv("A1b2C3"));

	/* Length: 64 is the longest. */
	memset(id, 'x', sizeof id);
	assert_true(id_valid(id, 1));
	assert_true(id_valid(id, 63));
	assert_true(id_valid(id, ID_MAX));
	assert_int_equal(ID_MAX, 64);
	assert_false(id_valid(id, ID_MAX + 1));
	id[ID_MAX] = '\0';
	assert_true(idv(id));
	id[ID_MAX] = 'x';
	id[ID_MAX + 1] = '\0';
	assert_false(idv(id));
	assert_false(id_valid("", 0));
	assert_false(id_valid("abc", 0));

	/* Only the given length counts. */
	assert_true(id_valid("ab/", 2));
	assert_false(id_valid("ab/", 3));

	/* The first character must be alphanumeric. */
	assert_false(idv("_a"));
	assert_false(idv(".a"));
	assert_false(idv("-a"));
	assert_false(idv("-"));
	assert_false(idv("."));
	assert_false(idv(".."));

	/* Injection and traversal. */
	assert_false(idv("../x"));
	assert_false(idv("a/b"));
	assert_false(idv("a b;rm"));
	assert_false(idv("a b"));
	assert_false(idv("a;b"));
	assert_false(idv("a$(id)"));
	assert_false(idv("a`id`"));
	assert_false(idv("a:b"));
	assert_false(idv("a{b}"));
	assert_false(idv("a*"));
	assert_false(idv("a\n"));
	assert_false(idv("a\t"));
	assert_false(id_valid("a\0b", 3));

	/* Not ASCII: é in UTF-8, Latin-1, and a lone high byte. */
	assert_false(idv("\xc3\xa9"));
	assert_false(idv("a\xc3\xa9"));
	assert_false(idv("\xe9"));
	assert_false(idv("a\xe9"));
	assert_false(idv("a\xff"));
	assert_false(idv("\x80"));
}

static void
test_fmt_bytes(void **state)
{
	char buf[32];

	(void)state;
	assert_string_equal(fmt_bytes(0, buf, sizeof buf), "0 B");
	assert_string_equal(fmt_bytes(1, buf, sizeof buf), "1 B");
	assert_string_equal(fmt_bytes(1023, buf, sizeof buf), "1023 B");
	assert_string_equal(fmt_bytes(1024, buf, sizeof buf), "1.0 KiB");
	assert_string_equal(fmt_bytes(1536, buf, sizeof buf), "1.5 KiB");
	assert_string_equal(fmt_bytes(6ULL << 20, buf, sizeof buf), "6.0 MiB");
	assert_string_equal(fmt_bytes(512ULL << 20, buf, sizeof buf), "512.0 MiB");
	assert_string_equal(fmt_bytes(8ULL << 30, buf, sizeof buf), "8.0 GiB");
	assert_string_equal(fmt_bytes(16ULL << 30, buf, sizeof buf), "16.0 GiB");
	assert_string_equal(fmt_bytes(1ULL << 40, buf, sizeof buf), "1.0 TiB");
	assert_string_equal(fmt_bytes(1ULL << 50, buf, sizeof buf), "1024.0 TiB");
	/* The result is buf itself, truncated to fit. */
	assert_ptr_equal(fmt_bytes(1, buf, sizeof buf), buf);
	assert_string_equal(fmt_bytes(512ULL << 20, buf, 4), "512");
}

static void
test_strv(void **state)
{
	struct strv sv = { 0 };

	(void)state;
	assert_int_equal(strv_split(&sv, "a b  c", " "), 3);
	assert_int_equal(sv.n, 3);
	assert_string_equal(sv.v[0], "a");
	assert_string_equal(sv.v[1], "b");
	assert_string_equal(sv.v[2], "c");
	assert_null(sv.v[3]);
	assert_true(strv_has(&sv, "b"));
	assert_false(strv_has(&sv, "d"));
	assert_false(strv_has(&sv, ""));

	/* It replaces the old contents. */
	assert_int_equal(strv_split(&sv, "  \tx\t y ", " \t"), 2);
	assert_string_equal(sv.v[0], "x");
	assert_string_equal(sv.v[1], "y");
	assert_null(sv.v[2]);
	assert_false(strv_has(&sv, "a"));

	assert_int_equal(strv_split(&sv, "a,,b,", ","), 2);
	assert_string_equal(sv.v[0], "a");
	assert_string_equal(sv.v[1], "b");

	assert_int_equal(strv_split(&sv, "", " "), 0);
	assert_int_equal(sv.n, 0);
	assert_int_equal(strv_split(&sv, "   ", " "), 0);
	assert_int_equal(sv.n, 0);

	assert_int_equal(strv_split(&sv, "one", " "), 1);
	assert_string_equal(sv.v[0], "one");

	strv_push(&sv, "two words");
	assert_int_equal(sv.n, 2);
	assert_string_equal(sv.v[1], "two words");
	assert_null(sv.v[2]);
	assert_true(strv_has(&sv, "two words"));

	strv_free(&sv);
	assert_null(sv.v);
	assert_int_equal(sv.n, 0);
	strv_free(&sv);	/* twice is harmless */
}

static void
test_strings_and_clocks(void **state)
{
	char *s;
	double a, b;

	(void)state;
	s = xstrndup("abcdef", 3);
	assert_string_equal(s, "abc");
	free(s);
	s = xstrdup("");
	assert_string_equal(s, "");
	free(s);
	s = xasprintf("%s-%d", "job", 42);
	assert_string_equal(s, "job-42");
	free(s);

	a = now_real();
	assert_true(a > 1.6e9 && a < 1e11);
	a = now_mono();
	b = now_mono();
	assert_true(b >= a);
}

static void
test_keys(void **state)
{
	struct keys k;
	char buf[KEY_MAX];

	(void)state;
	keys_init(&k, "debate");
	assert_string_equal(k.ns, "debate");
	assert_string_equal(k.queue, "{debate}:queue");
	assert_string_equal(k.events, "{debate}:events");
	assert_string_equal(k.results, "{debate}:results");
	assert_string_equal(k.dead, "{debate}:dead");
	assert_string_equal(k.workers, "{debate}:workers");
	assert_string_equal(k.cancel, "{debate}:cancel");
	assert_string_equal(k.delayed, "{debate}:delayed");
	assert_string_equal(k.reaper_lock, "{debate}:reaper");
	assert_string_equal(keys_id(&k, "job", "build-42", buf, sizeof buf), "{debate}:job:build-42");
	assert_string_equal(keys_id(&k, "progress", "b", buf, sizeof buf), "{debate}:progress:b");
	assert_string_equal(keys_id(&k, "log", "b", buf, sizeof buf), "{debate}:log:b");
	assert_string_equal(keys_id(&k, "result", "b", buf, sizeof buf), "{debate}:result:b");
	assert_string_equal(keys_id(&k, "active", "w1", buf, sizeof buf), "{debate}:active:w1");
	assert_string_equal(keys_id(&k, "worker", "w1", buf, sizeof buf), "{debate}:worker:w1");
	keys_free(&k);
	assert_null(k.queue);

	/* The longest namespace and id fit KEY_MAX. */
	{
		char ns[ID_MAX + 1], id[ID_MAX + 1];
		memset(ns, 'n', ID_MAX);
		ns[ID_MAX] = '\0';
		memset(id, 'i', ID_MAX);
		id[ID_MAX] = '\0';
		keys_init(&k, ns);
		keys_id(&k, "progress", id, buf, sizeof buf);
		assert_int_equal(strlen(buf), 2 + ID_MAX + 1 + strlen("progress") + 1 + ID_MAX);
		keys_free(&k);
	}
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parse_size_valid),
		cmocka_unit_test(test_parse_size_invalid),
		cmocka_unit_test(test_parse_seconds),
		cmocka_unit_test(test_parse_int),
		cmocka_unit_test(test_parse_bool),
		cmocka_unit_test(test_id_valid),
		cmocka_unit_test(test_fmt_bytes),
		cmocka_unit_test(test_strv),
		cmocka_unit_test(test_strings_and_clocks),
		cmocka_unit_test(test_keys),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
