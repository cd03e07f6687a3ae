/*
 * test_utf8.c: the sanitizer every str the worker writes goes through:
 * ill-formed input (stray bytes, overlongs, surrogates, code points over
 * U+10FFFF, truncated sequences) becomes U+FFFD per maximal subpart, and
 * cutting a long line never splits a character.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "debate.h"

#define R "\xef\xbf\xbd"	/* U+FFFD */

/* Sanitizing in[0..n) must give exactly want, and want must be valid. */
static void
clean_is(const char *in, size_t n, const char *want)
{
	char *out = malloc(3 * n + 1);
	size_t len = utf8_sanitize(out, 3 * n + 1, in, n);

	if (len != strlen(want) || memcmp(out, want, len) != 0)
		fail_msg("sanitizing %zu bytes gave \"%s\" (%zu bytes), want \"%s\"", n, out, len, want);
	assert_true(utf8_valid(out, len));
	assert_int_equal(utf8_valid(in, n), strcmp(in, want) == 0 && n == strlen(in));
	free(out);
}

#define CLEAN(in, want) clean_is((in), sizeof(in) - 1, (want))

static void
test_valid_text_is_untouched(void **state)
{
	(void)state;
	CLEAN("", "");
	CLEAN("plain ascii\ttab\x01\x1b[2J", "plain ascii\ttab\x01\x1b[2J");
	CLEAN("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80", "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80");
	CLEAN("\xc2\x80 \xdf\xbf \xe0\xa0\x80 \xef\xbf\xbf \xf0\x90\x80\x80 \xf4\x8f\xbf\xbf",
	    "\xc2\x80 \xdf\xbf \xe0\xa0\x80 \xef\xbf\xbf \xf0\x90\x80\x80 \xf4\x8f\xbf\xbf");
	CLEAN("\xed\x9f\xbf \xee\x80\x80", "\xed\x9f\xbf \xee\x80\x80");	/* around the surrogates */
	assert_true(utf8_valid("a\0b", 3));	/* U+0000 is a character too */
}

static void
test_stray_bytes(void **state)
{
	(void)state;
	CLEAN("\xff", R);
	CLEAN("\xfe\xff", R R);
	CLEAN("a\x80" "b", "a" R "b");
	CLEAN("\x80\xbf", R R);		/* continuation bytes, one each */
	CLEAN("\xf5\x80\x80\x80", R R R R);	/* F5-FF lead nothing */
	CLEAN("\xc1\xbf", R R);		/* C0, C1: overlong leads, never valid */
}

static void
test_overlongs(void **state)
{
	(void)state;
	CLEAN("\xc0\xaf", R R);			/* "/" in 2 bytes */
	CLEAN("\xe0\x80\xaf", R R R);		/* in 3 */
	CLEAN("\xe0\x9f\xbf", R R R);		/* U+07FF in 3 */
	CLEAN("\xf0\x80\x80\xaf", R R R R);	/* in 4 */
	CLEAN("\xf0\x8f\xbf\xbf", R R R R);	/* U+FFFF in 4 */
}

static void
test_surrogates_and_beyond_10ffff(void **state)
{
	(void)state;
	CLEAN("\xed\xa0\x80", R R R);		/* U+D800 */
	CLEAN("\xed\xbf\xbf", R R R);		/* U+DFFF */
	CLEAN("\xed\xa0\xbd\xed\xb8\x80", R R R R R R);	/* a CESU-8 pair */
	CLEAN("\xf4\x90\x80\x80", R R R R);	/* U+110000 */
	CLEAN("\xf7\xbf\xbf\xbf", R R R R);
}

static void
test_truncated_sequences(void **state)
{
	(void)state;
	/* A well-formed prefix cut short is one U+FFFD, whatever follows. */
	CLEAN("\xc3", R);
	CLEAN("\xe2\x82", R);
	CLEAN("\xf0\x9f\x98", R);
	CLEAN("\xf0\x9f\x98" "a", R "a");
	CLEAN("\xe2\x82\xe2\x82\xac", R "\xe2\x82\xac");
	CLEAN("\xf0\x9f\x98\xf0\x9f\x98\x80", R "\xf0\x9f\x98\x80");
	/* The example of Unicode 15, section 3.9 (U+FFFD substitution of maximal subparts). */
	CLEAN("\x61\xf1\x80\x80\xe1\x80\xc2\x62\x80\x63\x80\xbf\x64", "a" R R R "b" R "c" R R "d");
	/* And of table 3-8: invalid leads, then prefixes of valid sequences. */
	CLEAN("\xc0\xaf\xe0\x80\xbf\xf0\x81\x82\x41", R R R R R R R R "A");
	CLEAN("\xed\xa0\x80\xed\xbf\xbf\xed\xaf\x41", R R R R R R R R "A");
	CLEAN("\xf4\x91\x92\x93\xff\x41\x80\xbf\x42", R R R R R "A" R R "B");
	CLEAN("\xe1\x80\xe2\xf0\x91\x92\xf1\xbf\x41", R R R R "A");
}

/* Only whole characters fit into a short buffer, and it is terminated. */
static void
test_sanitize_short_buffer(void **state)
{
	char buf[8];

	(void)state;
	memset(buf, 'x', sizeof buf);
	assert_int_equal(utf8_sanitize(buf, 6, "ab\xe2\x82\xac" "c", 6), 5);
	assert_string_equal(buf, "ab\xe2\x82\xac");
	assert_int_equal(utf8_sanitize(buf, 5, "ab\xe2\x82\xac" "c", 6), 2);
	assert_string_equal(buf, "ab");
	assert_int_equal(utf8_sanitize(buf, 5, "ab\xff", 3), 2);	/* U+FFFD needs 3 */
	assert_string_equal(buf, "ab");
	assert_int_equal(utf8_sanitize(buf, 1, "ab", 2), 0);
	assert_string_equal(buf, "");
}

/* A 4-byte character across the 8 KiB split point moves whole to the next piece. */
static void
test_cut_at_8k(void **state)
{
	enum { MAX = 8192 };
	char *s = malloc(MAX + 16);

	(void)state;
	memset(s, 'a', MAX + 16);
	memcpy(s + MAX - 2, "\xf0\x9f\x98\x80", 4);	/* bytes 8190..8193 */
	assert_int_equal(utf8_cut(s, MAX + 16, MAX, false), MAX - 2);
	assert_int_equal(utf8_cut(s, MAX + 16, MAX, true), MAX - 2);
	assert_int_equal(utf8_cut(s + MAX - 2, MAX + 16 - (MAX - 2), MAX, false), MAX + 16 - (MAX - 2));

	/* Ending just at the limit, the character fits. */
	memset(s, 'a', MAX + 16);
	memcpy(s + MAX - 4, "\xf0\x9f\x98\x80", 4);
	assert_int_equal(utf8_cut(s, MAX + 16, MAX, false), MAX);

	/* Only 3 of its bytes read so far: with more to come it waits... */
	memset(s, 'a', MAX + 16);
	memcpy(s + MAX - 3, "\xf0\x9f\x98", 3);
	assert_int_equal(utf8_cut(s, MAX, MAX, true), MAX - 3);
	/* ...at the end of the input it is one U+FFFD, which fits exactly. */
	assert_int_equal(utf8_cut(s, MAX, MAX, false), MAX);

	/* Ill-formed bytes count as the 3 bytes of U+FFFD each. */
	memset(s, 0xff, MAX + 16);
	assert_int_equal(utf8_cut(s, MAX + 16, MAX, false), MAX / 3);
	assert_int_equal(utf8_cut(s, 10, MAX, false), 10);
	assert_int_equal(utf8_cut("", 0, MAX, false), 0);
	free(s);
}

/* utf8_next: the unit lengths the escaper in enqueue walks by. */
static void
test_next(void **state)
{
	bool valid;

	(void)state;
	assert_int_equal(utf8_next("a", 1, &valid), 1);
	assert_true(valid);
	assert_int_equal(utf8_next("\xc2\x9b", 2, &valid), 2);
	assert_true(valid);
	assert_int_equal(utf8_next("\xf0\x9f\x98\x80", 4, &valid), 4);
	assert_true(valid);
	assert_int_equal(utf8_next("\xf0\x9f\x98", 3, &valid), 3);
	assert_false(valid);
	assert_int_equal(utf8_next("\xed\xa0\x80", 3, &valid), 1);
	assert_false(valid);
}

/* utf8_pack writes a str that unpacks to the sanitized text. */
static void
test_pack(void **state)
{
	msgpack_sbuffer sb;
	msgpack_packer pk;
	msgpack_unpacked u;
	size_t off = 0;
	char *big = malloc(2000);

	(void)state;
	memset(big, 0xff, 2000);
	msgpack_sbuffer_init(&sb);
	msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
	msgpack_pack_array(&pk, 3);
	utf8_pack(&pk, "ok \xe2\x82\xac", 6);
	utf8_pack(&pk, "bad \xff\xfe", 6);
	utf8_pack(&pk, big, 2000);	/* beyond the stack buffer */
	msgpack_unpacked_init(&u);
	assert_int_equal(msgpack_unpack_next(&u, sb.data, sb.size, &off), MSGPACK_UNPACK_SUCCESS);
	assert_int_equal(u.data.via.array.ptr[0].via.str.size, 6);
	assert_memory_equal(u.data.via.array.ptr[0].via.str.ptr, "ok \xe2\x82\xac", 6);
	assert_int_equal(u.data.via.array.ptr[1].via.str.size, 10);
	assert_memory_equal(u.data.via.array.ptr[1].via.str.ptr, "bad " R R, 10);
	assert_int_equal(u.data.via.array.ptr[2].via.str.size, 6000);
	assert_true(utf8_valid(u.data.via.array.ptr[2].via.str.ptr, 6000));
	msgpack_unpacked_destroy(&u);
	msgpack_sbuffer_destroy(&sb);
	free(big);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_valid_text_is_untouched),
		cmocka_unit_test(test_stray_bytes),
		cmocka_unit_test(test_overlongs),
		cmocka_unit_test(test_surrogates_and_beyond_10ffff),
		cmocka_unit_test(test_truncated_sequences),
		cmocka_unit_test(test_sanitize_short_buffer),
		cmocka_unit_test(test_cut_at_8k),
		cmocka_unit_test(test_next),
		cmocka_unit_test(test_pack),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
