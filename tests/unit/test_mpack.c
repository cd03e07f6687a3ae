/*
 * test_mpack.c: the msgpack helpers: mp_precheck, the gate every
 * untrusted payload passes before msgpack-c allocates anything for it,
 * mp_unpack, the field readers, the packing helpers and the JSON printer.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <malloc.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "debate.h"

/* A byte string written with C escapes; its length excludes the final NUL. */
#define RAW(s) { s, sizeof(s) - 1 }

struct raw {
	const char *b;
	size_t n;
};

/* mp_precheck at the default depth. */
static int
pre(const void *b, size_t n, char *err, size_t errlen)
{
	return mp_precheck(b, n, MP_MAX_DEPTH, err, errlen);
}

/* A valid job, as a producer would send it. */
static void
pack_job(msgpack_sbuffer *sb)
{
	msgpack_packer pk;

	msgpack_sbuffer_init(sb);
	msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
	msgpack_pack_map(&pk, 11);
	mp_kv_str(&pk, "id", "build-42");
	mp_kv_str(&pk, "profile", "profiles/releng");
	mp_kv_str(&pk, "output", "out/build-42");
	mp_kv_uint(&pk, "source_date_epoch", 1700000000);
	mp_kv_double(&pk, "enqueued_at", 1700000000.25);
	mp_kv_str(&pk, "memory", "4g");
	mp_kv_int(&pk, "cpus", 2);
	mp_kv_double(&pk, "timeout", 1800.5);
	mp_kv_int(&pk, "retries", 3);
	mp_kv_str(&pk, "image", "localhost/debate-archiso:latest");
	mp_str(&pk, "meta");
	msgpack_pack_map(&pk, 3);
	mp_kv_int(&pk, "user", 7);
	mp_str(&pk, "tags");
	msgpack_pack_array(&pk, 2);
	mp_str(&pk, "a");
	msgpack_pack_nil(&pk);
	mp_str(&pk, "blob");
	msgpack_pack_bin(&pk, 3);
	msgpack_pack_bin_body(&pk, "\x00\x01\xff", 3);
}

/* Every msgpack type, in its smallest and its wider encodings. */
static const struct {
	const char *what;
	struct raw raw;
	msgpack_object_type type;
} valid_objects[] = {
	{ "nil", RAW("\xc0"), MSGPACK_OBJECT_NIL },
	{ "false", RAW("\xc2"), MSGPACK_OBJECT_BOOLEAN },
	{ "true", RAW("\xc3"), MSGPACK_OBJECT_BOOLEAN },
	{ "positive fixint 0", RAW("\x00"), MSGPACK_OBJECT_POSITIVE_INTEGER },
	{ "positive fixint 127", RAW("\x7f"), MSGPACK_OBJECT_POSITIVE_INTEGER },
	{ "negative fixint -1", RAW("\xff"), MSGPACK_OBJECT_NEGATIVE_INTEGER },
	{ "negative fixint -32", RAW("\xe0"), MSGPACK_OBJECT_NEGATIVE_INTEGER },
	{ "uint8", RAW("\xcc\xff"), MSGPACK_OBJECT_POSITIVE_INTEGER },
	{ "uint16", RAW("\xcd\xff\xff"), MSGPACK_OBJECT_POSITIVE_INTEGER },
	{ "uint32", RAW("\xce\xff\xff\xff\xff"), MSGPACK_OBJECT_POSITIVE_INTEGER },
	{ "uint64", RAW("\xcf\xff\xff\xff\xff\xff\xff\xff\xff"), MSGPACK_OBJECT_POSITIVE_INTEGER },
	{ "int8", RAW("\xd0\x80"), MSGPACK_OBJECT_NEGATIVE_INTEGER },
	{ "int16", RAW("\xd1\x80\x00"), MSGPACK_OBJECT_NEGATIVE_INTEGER },
	{ "int32", RAW("\xd2\x80\x00\x00\x00"), MSGPACK_OBJECT_NEGATIVE_INTEGER },
	{ "int64", RAW("\xd3\x80\x00\x00\x00\x00\x00\x00\x00"), MSGPACK_OBJECT_NEGATIVE_INTEGER },
	{ "float32", RAW("\xca\x3f\xc0\x00\x00"), MSGPACK_OBJECT_FLOAT32 },
	{ "float64", RAW("\xcb\x3f\xf8\x00\x00\x00\x00\x00\x00"), MSGPACK_OBJECT_FLOAT64 },
	{ "fixstr empty", RAW("\xa0"), MSGPACK_OBJECT_STR },
	{ "fixstr", RAW("\xa3" "abc"), MSGPACK_OBJECT_STR },
	{ "str8", RAW("\xd9\x03" "abc"), MSGPACK_OBJECT_STR },
	{ "str16", RAW("\xda\x00\x03" "abc"), MSGPACK_OBJECT_STR },
	{ "str32", RAW("\xdb\x00\x00\x00\x03" "abc"), MSGPACK_OBJECT_STR },
	{ "bin8", RAW("\xc4\x02\x00\xff"), MSGPACK_OBJECT_BIN },
	{ "bin16", RAW("\xc5\x00\x02\x00\xff"), MSGPACK_OBJECT_BIN },
	{ "bin32", RAW("\xc6\x00\x00\x00\x02\x00\xff"), MSGPACK_OBJECT_BIN },
	{ "bin8 empty", RAW("\xc4\x00"), MSGPACK_OBJECT_BIN },
	{ "fixarray empty", RAW("\x90"), MSGPACK_OBJECT_ARRAY },
	{ "fixarray", RAW("\x93\x01\xc0\xa1x"), MSGPACK_OBJECT_ARRAY },
	{ "array16", RAW("\xdc\x00\x02\x01\x02"), MSGPACK_OBJECT_ARRAY },
	{ "array32", RAW("\xdd\x00\x00\x00\x02\x01\x02"), MSGPACK_OBJECT_ARRAY },
	{ "array16 empty", RAW("\xdc\x00\x00"), MSGPACK_OBJECT_ARRAY },
	{ "fixmap empty", RAW("\x80"), MSGPACK_OBJECT_MAP },
	{ "fixmap", RAW("\x82\xa1" "a\x01\xa1" "b\xc3"), MSGPACK_OBJECT_MAP },
	{ "map16", RAW("\xde\x00\x01\xa1" "a\x01"), MSGPACK_OBJECT_MAP },
	{ "map32", RAW("\xdf\x00\x00\x00\x01\xa1" "a\x01"), MSGPACK_OBJECT_MAP },
	{ "map with int key", RAW("\x81\x07\x08"), MSGPACK_OBJECT_MAP },
	{ "fixext1", RAW("\xd4\x05\xaa"), MSGPACK_OBJECT_EXT },
	{ "fixext2", RAW("\xd5\x05\xaa\xbb"), MSGPACK_OBJECT_EXT },
	{ "fixext4 (timestamp32)", RAW("\xd6\xff\x00\x00\x00\x01"), MSGPACK_OBJECT_EXT },
	{ "fixext8", RAW("\xd7\x05\x01\x02\x03\x04\x05\x06\x07\x08"), MSGPACK_OBJECT_EXT },
	{ "fixext16", RAW("\xd8\x05" "0123456789abcdef"), MSGPACK_OBJECT_EXT },
	{ "ext8", RAW("\xc7\x01\x05\xaa"), MSGPACK_OBJECT_EXT },
	{ "ext8 empty", RAW("\xc7\x00\x05"), MSGPACK_OBJECT_EXT },
	{ "ext8 (timestamp96)", RAW("\xc7\x0c\xff\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01"),
	    MSGPACK_OBJECT_EXT },
	{ "ext16", RAW("\xc8\x00\x01\x05\xaa"), MSGPACK_OBJECT_EXT },
	{ "ext32", RAW("\xc9\x00\x00\x00\x01\x05\xaa"), MSGPACK_OBJECT_EXT },
	{ "array holding ext8 then int", RAW("\x92\xc7\x01\x05\xaa\x07"), MSGPACK_OBJECT_ARRAY },
	{ "map holding ext16", RAW("\x81\xa1" "e\xc8\x00\x02\x05\xaa\xbb"), MSGPACK_OBJECT_MAP },
};

/* Each valid object passes mp_precheck and unpacks to its type. */
static void
test_precheck_accepts_every_type(void **state)
{
	int bad = 0;

	(void)state;
	for (size_t i = 0; i < sizeof valid_objects / sizeof valid_objects[0]; i++) {
		char err[ERR_MAX] = "";
		msgpack_unpacked u;
		int rc = pre(valid_objects[i].raw.b, valid_objects[i].raw.n, err, sizeof err);

		if (rc != 0) {
			print_error("mp_precheck refused a valid %s (%zu bytes): %d %s\n",
			    valid_objects[i].what, valid_objects[i].raw.n, rc, err);
			bad++;
			continue;
		}
		msgpack_unpacked_init(&u);
		rc = mp_unpack(valid_objects[i].raw.b, valid_objects[i].raw.n, MP_MAX_DEPTH, &u, err,
		    sizeof err);
		if (rc != 0 || u.data.type != valid_objects[i].type) {
			print_error("mp_unpack of a valid %s: rc %d type %d: %s\n", valid_objects[i].what, rc,
			    (int)u.data.type, err);
			bad++;
		}
		msgpack_unpacked_destroy(&u);
	}
	assert_int_equal(bad, 0);
}

/* Every proper prefix of a valid job is refused as malformed. */
static void
test_precheck_truncated_every_prefix(void **state)
{
	msgpack_sbuffer sb;
	char err[ERR_MAX];

	(void)state;
	pack_job(&sb);
	assert_true(sb.size > 100);
	assert_int_equal(pre(sb.data, sb.size, err, sizeof err), 0);
	for (size_t n = 0; n < sb.size; n++) {
		/* A copy of exactly n bytes, so ASan sees any read past it. */
		char *b = malloc(n ? n : 1);
		int rc;
		memcpy(b, sb.data, n);
		err[0] = '\0';
		rc = pre(b, n, err, sizeof err);
		if (rc != -1)
			fail_msg("a %zu-byte prefix of a %zu-byte job: mp_precheck returned %d", n, sb.size, rc);
		if (strstr(err, "truncated") == NULL && strstr(err, "announces") == NULL)
			fail_msg("a %zu-byte prefix: unexpected message \"%s\"", n, err);
		free(b);
	}
	/* The empty buffer in particular. */
	assert_int_equal(pre("", 0, err, sizeof err), -1);
	assert_string_equal(err, "truncated msgpack (0 bytes)");
	msgpack_sbuffer_destroy(&sb);
}

static void
test_precheck_trailing_bytes(void **state)
{
	msgpack_sbuffer sb;
	char err[ERR_MAX];
	char *b;

	(void)state;
	pack_job(&sb);
	b = malloc(sb.size + 2);
	memcpy(b, sb.data, sb.size);
	b[sb.size] = '\0';
	b[sb.size + 1] = '\x01';
	assert_int_equal(pre(b, sb.size + 1, err, sizeof err), -1);
	assert_string_equal(err, "1 trailing bytes after the msgpack object");
	assert_int_equal(pre(b, sb.size + 2, err, sizeof err), -1);
	assert_string_equal(err, "2 trailing bytes after the msgpack object");
	free(b);

	/* Two whole objects are not one. */
	assert_int_equal(pre("\x01\x02", 2, err, sizeof err), -1);
	assert_non_null(strstr(err, "trailing"));
	assert_int_equal(pre("\x80\x80", 2, err, sizeof err), -1);
	msgpack_sbuffer_destroy(&sb);
}

static void
test_precheck_invalid_byte(void **state)
{
	char err[ERR_MAX];

	(void)state;
	assert_int_equal(pre("\xc1", 1, err, sizeof err), -1);
	assert_string_equal(err, "invalid msgpack byte 0xc1 at offset 0");
	/* Inside a map: {"a": 0xc1} */
	assert_int_equal(pre("\x81\xa1" "a\xc1", 4, err, sizeof err), -1);
	assert_string_equal(err, "invalid msgpack byte 0xc1 at offset 3");
	/* And mp_unpack refuses it the same way. */
	{
		msgpack_unpacked u;
		msgpack_unpacked_init(&u);
		assert_int_equal(mp_unpack("\x91\xc1", 2, MP_MAX_DEPTH, &u, err, sizeof err), -1);
		assert_non_null(strstr(err, "0xc1"));
		msgpack_unpacked_destroy(&u);
	}
}

/* n nested arrays: [[[...[inner]...]]], inner being a fixint or nothing. */
static char *
nested(int n, bool empty_inner, size_t *len)
{
	char *b = malloc((size_t)n + 1);

	for (int i = 0; i < n; i++)
		b[i] = (char)(i == n - 1 && empty_inner ? 0x90 : 0x91);
	*len = (size_t)n;
	if (!empty_inner)
		b[(*len)++] = 0x07;
	return b;
}

/*
 * The boundary the code implements: the top-level object is level 1 and
 * every container adds one, so a scalar inside MP_MAX_DEPTH - 1 arrays
 * (level MP_MAX_DEPTH) is accepted and one more array is refused with -2.
 * An empty container holds nothing deeper: MP_MAX_DEPTH arrays whose
 * innermost one is empty are accepted.
 */
static void
test_precheck_depth_boundary(void **state)
{
	char err[ERR_MAX];
	size_t n;
	char *b;

	(void)state;
	assert_int_equal(MP_MAX_DEPTH, 16);

	b = nested(MP_MAX_DEPTH - 1, false, &n);
	assert_int_equal(pre(b, n, err, sizeof err), 0);
	free(b);
	b = nested(MP_MAX_DEPTH, false, &n);
	assert_int_equal(pre(b, n, err, sizeof err), -2);
	assert_string_equal(err, "nested deeper than 16 levels");
	free(b);

	b = nested(MP_MAX_DEPTH, true, &n);
	assert_int_equal(pre(b, n, err, sizeof err), 0);
	free(b);
	b = nested(MP_MAX_DEPTH + 1, true, &n);
	assert_int_equal(pre(b, n, err, sizeof err), -2);
	free(b);

	/* Far deeper, and maps too: {"a": {"a": ... 1}}. */
	b = nested(1000, false, &n);
	assert_int_equal(pre(b, n, err, sizeof err), -2);
	free(b);
	{
		char m[3 * 40 + 1];
		for (int i = 0; i < 40; i++) {
			m[3 * i] = (char)0x81;
			m[3 * i + 1] = (char)0xa1;
			m[3 * i + 2] = 'a';
		}
		m[120] = 0x01;
		assert_int_equal(pre(m, sizeof m, err, sizeof err), -2);
		/* 15 maps around a scalar: level 16, accepted. */
		assert_int_equal(pre(m + 3 * 25, sizeof m - 3 * 25, err, sizeof err), 0);
		assert_int_equal(pre(m + 3 * 24, sizeof m - 3 * 24, err, sizeof err), -2);
	}

	/* A smaller max_depth is honoured, a larger one is capped. */
	b = nested(1, false, &n);
	assert_int_equal(mp_precheck(b, n, 2, err, sizeof err), 0);
	free(b);
	b = nested(2, false, &n);
	assert_int_equal(mp_precheck(b, n, 2, err, sizeof err), -2);
	assert_string_equal(err, "nested deeper than 2 levels");
	free(b);
	b = nested(MP_MAX_DEPTH, false, &n);
	assert_int_equal(mp_precheck(b, n, 1000, err, sizeof err), -2);
	free(b);

	/* mp_unpack reports -2 too. */
	{
		msgpack_unpacked u;
		b = nested(MP_MAX_DEPTH + 3, false, &n);
		msgpack_unpacked_init(&u);
		assert_int_equal(mp_unpack(b, n, MP_MAX_DEPTH, &u, err, sizeof err), -2);
		msgpack_unpacked_destroy(&u);
		free(b);
	}
}

/* Bytes the process has malloc'd (glibc's arena; 0 under ASan). */
static size_t
heap_in_use(void)
{
	struct mallinfo2 mi = mallinfo2();
	return mi.uordblks + mi.hblkhd;
}

/*
 * An array32 announcing 0xffffffff elements in 10 bytes: msgpack-c would
 * allocate 0xffffffff * sizeof(msgpack_object) up front.  mp_precheck must
 * refuse it, and mp_unpack must not hand it to msgpack-c at all.
 */
static void
test_precheck_huge_announcements(void **state)
{
	static const struct raw cases[] = {
		RAW("\xdd\xff\xff\xff\xff\x01\x02\x03\x04\x05"),	/* array32, 10 bytes */
		RAW("\xdf\xff\xff\xff\xff\x01\x02\x03\x04\x05"),	/* map32 */
		RAW("\xdc\xff\xff\x01\x02"),				/* array16 */
		RAW("\xde\x00\x10" "0123456789abcdefghij"),		/* map16: 16 pairs, 20 bytes */
		RAW("\xde\x00\x03\x01\x02\x03\x04\x05"),		/* map16: 3 pairs, 5 bytes */
		RAW("\x8f\x01\x02"),					/* fixmap: 15 pairs */
		RAW("\x9f\x01\x02"),					/* fixarray: 15 items */
		RAW("\x91\xdd\x7f\xff\xff\xff\x00"),			/* nested array32 */
	};
	char err[ERR_MAX];

	(void)state;
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		msgpack_unpacked u;
		size_t before;
		int rc;

		err[0] = '\0';
		rc = pre(cases[i].b, cases[i].n, err, sizeof err);
		if (rc != -1)
			fail_msg("case %zu: mp_precheck returned %d (%s)", i, rc, err);
		if (strstr(err, "announces") == NULL && strstr(err, "truncated") == NULL)
			fail_msg("case %zu: message \"%s\"", i, err);

		msgpack_unpacked_init(&u);
		before = heap_in_use();
		rc = mp_unpack(cases[i].b, cases[i].n, MP_MAX_DEPTH, &u, err, sizeof err);
		assert_int_equal(rc, -1);
		assert_int_equal(heap_in_use(), before);	/* msgpack-c allocated no zone */
		assert_null(u.zone);
		msgpack_unpacked_destroy(&u);
	}
	assert_int_equal(pre(cases[0].b, cases[0].n, err, sizeof err), -1);
	assert_string_equal(err, "msgpack container announces 4294967295 elements in 5 bytes");

	/* A map16 with exactly as many elements as bytes is fine: 10 pairs, 20 bytes. */
	assert_int_equal(pre("\xde\x00\x0a" "01234567890123456789", 23, err, sizeof err), 0);
	/* Long strings and bins announcing more than there is are truncated. */
	assert_int_equal(pre("\xdb\xff\xff\xff\xff" "abc", 8, err, sizeof err), -1);
	assert_non_null(strstr(err, "truncated"));
	assert_int_equal(pre("\xc6\xff\xff\xff\xff" "abc", 8, err, sizeof err), -1);
	assert_int_equal(pre("\xc9\xff\xff\xff\xff\x05" "abc", 9, err, sizeof err), -1);
	assert_int_equal(pre("\xcf\x01", 2, err, sizeof err), -1);
	assert_int_equal(pre("\xd8\x05" "short", 7, err, sizeof err), -1);
}

/*
 * ext8/16/32 are 0xc7-0xc9, a length, a type byte, then the data.  The
 * walk must land exactly after them, or it checks different bytes than
 * msgpack-c then unpacks: here an array of 5 holds an empty ext8 and then
 * an array32 of 0xffffffff elements that must be refused (msgpack-c
 * would allocate 128 GiB for it).  mp_unpack is not called: under ASan
 * that allocation aborts the whole test program.
 */
static void
test_precheck_ext_stays_in_step(void **state)
{
	static const char evil[] = "\x95\xc7\x00\x01\xdd\xff\xff\xff\xff";
	static const char trailing[] = "\x91\xc7\x00\x01\x07";	/* [ext8()] then a stray byte */
	char err[ERR_MAX] = "";
	int rc;

	(void)state;
	rc = pre(evil, sizeof evil - 1, err, sizeof err);
	if (rc != -1)
		fail_msg("array(5)[ext8(len 0), array32(0xffffffff)...] passed mp_precheck (rc %d)", rc);
	rc = pre(trailing, sizeof trailing - 1, err, sizeof err);
	if (rc != -1)
		fail_msg("[ext8(len 0)] followed by one trailing byte passed mp_precheck (rc %d)", rc);
}

static void
test_unpack_round_trip(void **state)
{
	msgpack_sbuffer sb;
	msgpack_unpacked u;
	const msgpack_object *o, *meta, *v;
	char err[ERR_MAX], buf[64];
	double d;

	(void)state;
	pack_job(&sb);
	msgpack_unpacked_init(&u);
	assert_int_equal(mp_unpack(sb.data, sb.size, MP_MAX_DEPTH, &u, err, sizeof err), 0);
	o = &u.data;
	assert_int_equal(o->type, MSGPACK_OBJECT_MAP);
	assert_int_equal(o->via.map.size, 11);

	assert_true(mp_get_str(o, "id", buf, sizeof buf));
	assert_string_equal(buf, "build-42");
	assert_true(mp_get_str(o, "profile", buf, sizeof buf));
	assert_string_equal(buf, "profiles/releng");
	assert_true(mp_get_str(o, "image", buf, sizeof buf));
	assert_string_equal(buf, "localhost/debate-archiso:latest");
	assert_true(mp_get_num(o, "source_date_epoch", &d));
	assert_true(d == 1700000000.0);
	assert_true(mp_get_num(o, "enqueued_at", &d));
	assert_true(d == 1700000000.25);
	assert_true(mp_get_num(o, "timeout", &d));
	assert_true(d == 1800.5);
	assert_true(mp_get_num(o, "cpus", &d));
	assert_true(d == 2);

	meta = mp_get(o, "meta");
	assert_non_null(meta);
	assert_int_equal(meta->type, MSGPACK_OBJECT_MAP);
	v = mp_get(meta, "user");
	assert_non_null(v);
	assert_int_equal(v->type, MSGPACK_OBJECT_POSITIVE_INTEGER);
	assert_int_equal(v->via.u64, 7);
	v = mp_get(meta, "blob");
	assert_non_null(v);
	assert_int_equal(v->type, MSGPACK_OBJECT_BIN);
	assert_int_equal(v->via.bin.size, 3);
	assert_memory_equal(v->via.bin.ptr, "\x00\x01\xff", 3);
	v = mp_get(meta, "tags");
	assert_int_equal(v->type, MSGPACK_OBJECT_ARRAY);
	assert_int_equal(v->via.array.size, 2);
	assert_int_equal(v->via.array.ptr[1].type, MSGPACK_OBJECT_NIL);

	/* Re-packing the object gives the same bytes. */
	{
		msgpack_sbuffer sb2;
		msgpack_packer pk;
		msgpack_sbuffer_init(&sb2);
		msgpack_packer_init(&pk, &sb2, msgpack_sbuffer_write);
		msgpack_pack_object(&pk, u.data);
		assert_int_equal(sb2.size, sb.size);
		assert_memory_equal(sb2.data, sb.data, sb.size);
		msgpack_sbuffer_destroy(&sb2);
	}
	msgpack_unpacked_destroy(&u);
	msgpack_sbuffer_destroy(&sb);
}

static void
test_get_helpers(void **state)
{
	msgpack_sbuffer sb;
	msgpack_packer pk;
	msgpack_unpacked u;
	char err[ERR_MAX], buf[8];
	double d = -1;

	(void)state;
	msgpack_sbuffer_init(&sb);
	msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
	msgpack_pack_map(&pk, 9);
	mp_kv_str(&pk, "s", "1234567");	/* fits buf[8] exactly */
	mp_kv_str(&pk, "long", "12345678");	/* does not */
	mp_kv_int(&pk, "neg", -5);
	mp_kv_uint(&pk, "big", UINT64_MAX);
	mp_kv_double(&pk, "f", 0.25);
	mp_kv_bool(&pk, "b", true);
	mp_kv_nil(&pk, "n");
	mp_kv_str(&pk, "null", NULL);
	msgpack_pack_int(&pk, 5);	/* a non-string key is skipped by mp_get */
	mp_str(&pk, "int key");

	msgpack_unpacked_init(&u);
	assert_int_equal(mp_unpack(sb.data, sb.size, MP_MAX_DEPTH, &u, err, sizeof err), 0);

	assert_true(mp_get_str(&u.data, "s", buf, sizeof buf));
	assert_string_equal(buf, "1234567");
	assert_false(mp_get_str(&u.data, "long", buf, sizeof buf));
	assert_false(mp_get_str(&u.data, "neg", buf, sizeof buf));	/* not a str */
	assert_false(mp_get_str(&u.data, "absent", buf, sizeof buf));
	assert_false(mp_get_str(&u.data, "", buf, sizeof buf));
	assert_true(mp_get_str(&u.data, "null", buf, sizeof buf));	/* mp_kv_str(NULL) packs "" */
	assert_string_equal(buf, "");

	assert_true(mp_get_num(&u.data, "neg", &d));
	assert_true(d == -5);
	assert_true(mp_get_num(&u.data, "big", &d));
	assert_true(d == (double)UINT64_MAX);
	assert_true(mp_get_num(&u.data, "f", &d));
	assert_true(d == 0.25);
	d = 42;
	assert_false(mp_get_num(&u.data, "s", &d));
	assert_false(mp_get_num(&u.data, "b", &d));
	assert_false(mp_get_num(&u.data, "n", &d));
	assert_false(mp_get_num(&u.data, "absent", &d));
	assert_true(d == 42);

	assert_int_equal(mp_get(&u.data, "b")->type, MSGPACK_OBJECT_BOOLEAN);
	assert_true(mp_get(&u.data, "b")->via.boolean);
	assert_int_equal(mp_get(&u.data, "n")->type, MSGPACK_OBJECT_NIL);
	assert_null(mp_get(&u.data, "5"));
	assert_null(mp_get(&u.data, "S"));	/* keys are case-sensitive */
	assert_null(mp_get(&u.data, "lon"));	/* and whole */
	assert_null(mp_get(NULL, "s"));
	/* Not a map: nothing to find. */
	assert_null(mp_get(&mp_get(&u.data, "s")[0], "s"));
	assert_false(mp_get_str(mp_get(&u.data, "neg"), "x", buf, sizeof buf));

	msgpack_unpacked_destroy(&u);
	msgpack_sbuffer_destroy(&sb);
}

/* mp_json of o into a string the caller frees. */
static char *
json_of(const msgpack_object *o)
{
	char *s = NULL;
	size_t n = 0;
	FILE *f = open_memstream(&s, &n);

	assert_non_null(f);
	mp_json(f, o);
	assert_int_equal(fclose(f), 0);
	return s;
}

/* Unpack raw bytes and print them as JSON. */
static char *
json_of_raw(const char *b, size_t n)
{
	msgpack_unpacked u;
	char err[ERR_MAX], *s;

	msgpack_unpacked_init(&u);
	if (mp_unpack(b, n, MP_MAX_DEPTH, &u, err, sizeof err) != 0)
		fail_msg("mp_unpack: %s", err);
	s = json_of(&u.data);
	msgpack_unpacked_destroy(&u);
	return s;
}

static void
test_json_nested(void **state)
{
	msgpack_sbuffer sb;
	msgpack_packer pk;
	msgpack_unpacked u;
	char err[ERR_MAX], *s;

	(void)state;
	msgpack_sbuffer_init(&sb);
	msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
	msgpack_pack_map(&pk, 8);
	mp_kv_str(&pk, "id", "j1");
	mp_str(&pk, "n");
	msgpack_pack_array(&pk, 8);
	msgpack_pack_int(&pk, 1);
	msgpack_pack_int(&pk, -2);
	msgpack_pack_double(&pk, 1.5);
	msgpack_pack_float(&pk, 0.25f);
	msgpack_pack_double(&pk, 0.1);
	msgpack_pack_true(&pk);
	msgpack_pack_false(&pk);
	msgpack_pack_nil(&pk);
	mp_str(&pk, "m");
	msgpack_pack_map(&pk, 2);
	mp_str(&pk, "k");
	msgpack_pack_map(&pk, 0);
	mp_str(&pk, "a");
	msgpack_pack_array(&pk, 0);
	mp_kv_str(&pk, "s", "q\"b\\s/\n\r\t\x01\x1f\x7f" "\xc3\xa9");
	mp_str(&pk, "bin");
	msgpack_pack_bin(&pk, 3);
	msgpack_pack_bin_body(&pk, "a\nb", 3);
	msgpack_pack_int(&pk, 7);
	mp_str(&pk, "seven");
	mp_kv_uint(&pk, "big", UINT64_MAX);
	mp_str(&pk, "e");
	msgpack_pack_ext(&pk, 1, 5);
	msgpack_pack_ext_body(&pk, "x", 1);

	msgpack_unpacked_init(&u);
	assert_int_equal(mp_unpack(sb.data, sb.size, MP_MAX_DEPTH, &u, err, sizeof err), 0);
	s = json_of(&u.data);
	assert_string_equal(s,
	    "{\"id\":\"j1\","
	    "\"n\":[1,-2,1.5,0.25,0.10000000000000001,true,false,null],"
	    "\"m\":{\"k\":{},\"a\":[]},"
	    "\"s\":\"q\\\"b\\\\s/\\n\\r\\t\\u0001\\u001f\\u007f\xc3\xa9\","
	    "\"bin\":\"a\\nb\","
	    "\"7\":\"seven\","
	    "\"big\":18446744073709551615,"
	    "\"e\":null}");
	free(s);
	msgpack_unpacked_destroy(&u);
	msgpack_sbuffer_destroy(&sb);

	/* Scalars at the top level. */
	s = json_of_raw("\xc0", 1);
	assert_string_equal(s, "null");
	free(s);
	s = json_of_raw("\xd3\x80\x00\x00\x00\x00\x00\x00\x00", 9);
	assert_string_equal(s, "-9223372036854775808");
	free(s);
	s = json_of_raw("\xa0", 1);
	assert_string_equal(s, "\"\"");
	free(s);
}

/*
 * The header promises bin is written as lossless "\u"-escaped text, and
 * the output is JSON for scripts: bytes that are not text must be escaped,
 * and NaN or infinity must not appear as bare words JSON has not got.
 */
static void
test_json_is_json(void **state)
{
	static const struct {
		const char *what;
		struct raw raw;
	} cases[] = {
		{ "bin 00 80 ff", RAW("\xc4\x03\x00\x80\xff") },
		{ "NaN", RAW("\xcb\x7f\xf8\x00\x00\x00\x00\x00\x00") },
		{ "+inf", RAW("\xcb\x7f\xf0\x00\x00\x00\x00\x00\x00") },
		{ "-inf", RAW("\xcb\xff\xf0\x00\x00\x00\x00\x00\x00") },
	};
	int bad = 0;

	(void)state;
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		char *s = json_of_raw(cases[i].raw.b, cases[i].raw.n);
		bool ok;

		if (i == 0)
			ok = strcmp(s, "\"\\u0000\\u0080\\u00ff\"") == 0;
		else	/* null, or a string: anything JSON has */
			ok = strcmp(s, "null") == 0 || s[0] == '"';
		if (!ok) {
			print_error("mp_json of %s is not JSON (or not lossless): ", cases[i].what);
			for (const char *c = s; *c; c++)
				print_error((unsigned char)*c < 0x80 ? "%c" : "\\x%02x", (unsigned char)*c);
			print_error("\n");
			bad++;
		}
		free(s);
	}
	assert_int_equal(bad, 0);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_precheck_accepts_every_type),
		cmocka_unit_test(test_precheck_truncated_every_prefix),
		cmocka_unit_test(test_precheck_trailing_bytes),
		cmocka_unit_test(test_precheck_invalid_byte),
		cmocka_unit_test(test_precheck_depth_boundary),
		cmocka_unit_test(test_precheck_huge_announcements),
		cmocka_unit_test(test_precheck_ext_stays_in_step),
		cmocka_unit_test(test_unpack_round_trip),
		cmocka_unit_test(test_get_helpers),
		cmocka_unit_test(test_json_nested),
		cmocka_unit_test(test_json_is_json),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
