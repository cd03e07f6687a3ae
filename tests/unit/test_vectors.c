/*
 * test_vectors.c: the shared payload vectors through payload_decode().
 *
 * tests/vectors/payloads.txt lists payloads (hex) with the refusal each
 * must get, or ok; tests/python/test_vectors.py runs the same file through
 * the Python client's validator, so the two cannot drift apart.  Its "@"
 * lines set the worker.ini values both sides check against.  Every rule
 * the vectors exercise needs no filesystem: payload_decode() checks paths by
 * their text alone.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "debate.h"

#define VECTORS "tests/vectors/payloads.txt"
#define LINE_MAX_LEN (64 * 1024)

static struct config cfg;

/* One "@key value" line into cfg. */
static void
vec_config(const char *key, const char *value, int line)
{
	char err[ERR_MAX];

	if (strcmp(key, "builds_root") == 0) {
		free(cfg.builds_root);
		cfg.builds_root = xstrdup(value);
	} else if (strcmp(key, "image") == 0) {
		free(cfg.image);
		cfg.image = xstrdup(value);
	} else if (strcmp(key, "images") == 0) {
		strv_split(&cfg.images, value, " ");
	} else if (strcmp(key, "max_payload") == 0) {
		if (parse_size(value, &cfg.max_payload, err, sizeof err) != 0)
			fail_msg("%s:%d: %s", VECTORS, line, err);
	} else if (strcmp(key, "max_memory") == 0) {
		if (parse_size(value, &cfg.max_memory, err, sizeof err) != 0)
			fail_msg("%s:%d: %s", VECTORS, line, err);
	} else if (strcmp(key, "max_cpus") == 0) {
		cfg.max_cpus = strtod(value, NULL);
	} else if (strcmp(key, "max_timeout") == 0) {
		cfg.max_timeout = strtod(value, NULL);
	} else if (strcmp(key, "timeout") == 0) {
		cfg.timeout = strtod(value, NULL);
	} else
		fail_msg("%s:%d: unknown setting @%s", VECTORS, line, key);
}

/* Hex digits into bytes; the length, or -1. */
static long
vec_unhex(const char *hex, size_t n, unsigned char *out)
{
	if (n == 1 && hex[0] == '-')
		return 0;	/* the empty payload */
	if (n % 2 != 0)
		return -1;
	for (size_t i = 0; i < n; i += 2) {
		char b[3] = { hex[i], hex[i + 1], '\0' };
		if (!isxdigit((unsigned char)b[0]) || !isxdigit((unsigned char)b[1]))
			return -1;
		out[i / 2] = (unsigned char)strtol(b, NULL, 16);
	}
	return (long)(n / 2);
}

/* Every vector gets its reason; each reason a client can check is covered. */
static void
test_vectors(void **state)
{
	static char text[LINE_MAX_LEN];
	static unsigned char buf[LINE_MAX_LEN / 2];
	FILE *f = fopen(VECTORS, "r");
	int line = 0, count = 0, wrong = 0;
	bool seen[REFUSE_ARCHIVE + 1] = { false };	/* claim_failed is the only reason no payload gets */

	(void)state;
	assert_non_null(f);
	config_defaults(&cfg);
	while (fgets(text, sizeof text, f) != NULL) {
		char expect[64], err[ERR_MAX], *p = text, *hex, *end;
		struct job_spec js;
		enum refusal r;
		const char *got;
		long len;

		line++;
		text[strcspn(text, "\n")] = '\0';
		if (text[0] == '\0' || text[0] == '#')
			continue;
		if (text[0] == '@') {
			char *value = strchr(text, ' ');
			assert_non_null(value);
			*value++ = '\0';
			vec_config(text + 1, value, line);
			continue;
		}
		end = strchr(p, ' ');
		if (end == NULL || (size_t)(end - p) >= sizeof expect)
			fail_msg("%s:%d: not EXPECT HEX", VECTORS, line);
		memcpy(expect, p, (size_t)(end - p));
		expect[end - p] = '\0';
		hex = end + 1;
		end = hex + strcspn(hex, " #");
		if ((len = vec_unhex(hex, (size_t)(end - hex), buf)) < 0)
			fail_msg("%s:%d: bad hex", VECTORS, line);
		r = payload_decode((const char *)buf, (size_t)len, &cfg, &js, err, sizeof err);
		payload_free(&js);
		got = r == REFUSE_NONE ? "ok" : refusal_name(r);
		assert_true((int)r >= 0 && r <= REFUSE_ARCHIVE);
		seen[r] = true;
		count++;
		if (strcmp(got, expect) != 0) {
			print_error("%s:%d: wanted %s, got %s (%s)%s\n", VECTORS, line, expect, got,
			    r == REFUSE_NONE ? "accepted" : err, strchr(end, '#') ? strchr(end, '#') : "");
			wrong++;
		}
	}
	fclose(f);
	config_free(&cfg);
	assert_int_equal(wrong, 0);
	assert_true(count >= 60);
	for (int i = 0; i <= REFUSE_ARCHIVE; i++)
		if (!seen[i] && i != REFUSE_CLAIM)
			fail_msg("no vector gets %s", i == REFUSE_NONE ? "ok" : refusal_name((enum refusal)i));
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_vectors),
	};

	log_init("test_vectors", LOG_ERR);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
