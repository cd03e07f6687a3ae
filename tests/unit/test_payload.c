/*
 * test_payload.c: payload_decode(), the one gate every payload passes.  Valid
 * jobs decode to what the producer meant; every hostile payload is refused
 * with the reason PROTOCOL.md names and a message naming the field.
 *
 * Payloads are written in a small notation and packed with msgpack-c's
 * packer (see spec_pack below):
 *   {'k': v, ...}  [v, ...]  'str'  b'bin'  12  -3  1.5  1.5f (float32)
 *   nil true false nan inf -inf
 *   'x'*300 + '/y'   strings (and bins) repeat and concatenate
 *   \xHH \\ \' escapes inside quotes
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "debate.h"

/* ---- the payload notation --------------------------------------------- */

struct spec {
	const char *s;		/* what is left to read */
	const char *all;	/* for messages */
};

static void spec_value(struct spec *p, msgpack_sbuffer *out, size_t *count);

static void
spec_ws(struct spec *p)
{
	while (isspace((unsigned char)*p->s))
		p->s++;
}

static void
spec_fail(const struct spec *p, const char *what)
{
	fail_msg("payload notation: %s at offset %zu of: %.200s", what, (size_t)(p->s - p->all), p->all);
}

/* One quoted literal, escapes decoded, appended to buf. */
static void
spec_quoted(struct spec *p, msgpack_sbuffer *buf)
{
	if (*p->s != '\'')
		spec_fail(p, "expected '");
	p->s++;
	for (;;) {
		char c = *p->s++;
		if (c == '\0')
			spec_fail(p, "unterminated string");
		if (c == '\'')
			break;
		if (c == '\\') {
			c = *p->s++;
			if (c == 'x') {
				char hex[3] = { p->s[0], p->s[1], '\0' };
				if (!isxdigit((unsigned char)hex[0]) || !isxdigit((unsigned char)hex[1]))
					spec_fail(p, "bad \\x escape");
				c = (char)strtol(hex, NULL, 16);
				p->s += 2;
			} else if (c != '\\' && c != '\'')
				spec_fail(p, "bad escape");
		}
		msgpack_sbuffer_write(buf, &c, 1);
	}
}

/* 'a'*N + 'b' ...: the bytes of a string expression. */
static void
spec_string_expr(struct spec *p, bool bin, msgpack_sbuffer *buf)
{
	for (;;) {
		msgpack_sbuffer term;
		unsigned long reps = 1;

		msgpack_sbuffer_init(&term);
		if (bin) {
			if (*p->s != 'b')
				spec_fail(p, "expected b'");
			p->s++;
		}
		spec_quoted(p, &term);
		spec_ws(p);
		if (*p->s == '*') {
			char *end;
			p->s++;
			spec_ws(p);
			reps = strtoul(p->s, &end, 10);
			if (end == p->s)
				spec_fail(p, "expected a count after *");
			p->s = end;
			spec_ws(p);
		}
		for (unsigned long i = 0; i < reps && term.size > 0; i++)
			msgpack_sbuffer_write(buf, term.data, term.size);
		msgpack_sbuffer_destroy(&term);
		if (*p->s != '+')
			return;
		p->s++;
		spec_ws(p);
	}
}

/* A number: integer (signed or not) or float (float32 with an f). */
static void
spec_number(struct spec *p, msgpack_packer *pk)
{
	const char *start = p->s;
	bool is_float = false;
	char *end;

	if (*p->s == '-')
		p->s++;
	while (isdigit((unsigned char)*p->s) || *p->s == '.' || *p->s == 'e' || *p->s == 'E' ||
	    ((*p->s == '-' || *p->s == '+') && (p->s[-1] == 'e' || p->s[-1] == 'E'))) {
		if (!isdigit((unsigned char)*p->s))
			is_float = true;
		p->s++;
	}
	if (p->s == start || (p->s == start + 1 && *start == '-'))
		spec_fail(p, "expected a value");
	errno = 0;
	if (*p->s == 'f') {
		msgpack_pack_float(pk, strtof(start, &end));
		p->s++;
	} else if (is_float) {
		msgpack_pack_double(pk, strtod(start, &end));
	} else if (*start == '-') {
		msgpack_pack_int64(pk, strtoll(start, &end, 10));
	} else {
		msgpack_pack_uint64(pk, strtoull(start, &end, 10));
	}
	if (errno != 0)
		spec_fail(p, "number out of range");
}

/* Elements up to close into a buffer of their own, counted. */
static void
spec_elements(struct spec *p, char close, bool pairs, msgpack_sbuffer *body, size_t *n)
{
	msgpack_sbuffer_init(body);
	*n = 0;
	p->s++;
	spec_ws(p);
	if (*p->s == close) {
		p->s++;
		return;
	}
	for (;;) {
		spec_value(p, body, n);
		spec_ws(p);
		if (pairs) {
			if (*p->s != ':')
				spec_fail(p, "expected :");
			p->s++;
			spec_value(p, body, n);
			spec_ws(p);
		}
		if (*p->s == close) {
			p->s++;
			return;
		}
		if (*p->s != ',')
			spec_fail(p, "expected , or a closing bracket");
		p->s++;
	}
}

/* One value, packed onto out; *count counts it. */
static void
spec_value(struct spec *p, msgpack_sbuffer *out, size_t *count)
{
	msgpack_packer pk;

	msgpack_packer_init(&pk, out, msgpack_sbuffer_write);
	spec_ws(p);
	if (*p->s == '{' || *p->s == '[') {
		bool map = *p->s == '{';
		msgpack_sbuffer body;
		size_t n;
		spec_elements(p, map ? '}' : ']', map, &body, &n);
		if (map)
			msgpack_pack_map(&pk, n / 2);
		else
			msgpack_pack_array(&pk, n);
		if (body.size)
			msgpack_sbuffer_write(out, body.data, body.size);
		msgpack_sbuffer_destroy(&body);
	} else if (*p->s == '\'' || (p->s[0] == 'b' && p->s[1] == '\'')) {
		bool bin = *p->s == 'b';
		msgpack_sbuffer b;
		msgpack_sbuffer_init(&b);
		spec_string_expr(p, bin, &b);
		if (bin)
			msgpack_pack_bin(&pk, b.size);
		else
			msgpack_pack_str(&pk, b.size);
		if (b.size > 0)
			msgpack_sbuffer_write(out, b.data, b.size);
		msgpack_sbuffer_destroy(&b);
	} else if (strncmp(p->s, "nil", 3) == 0) {
		msgpack_pack_nil(&pk);
		p->s += 3;
	} else if (strncmp(p->s, "true", 4) == 0) {
		msgpack_pack_true(&pk);
		p->s += 4;
	} else if (strncmp(p->s, "false", 5) == 0) {
		msgpack_pack_false(&pk);
		p->s += 5;
	} else if (strncmp(p->s, "nan", 3) == 0) {
		msgpack_pack_double(&pk, NAN);
		p->s += 3;
	} else if (strncmp(p->s, "inf", 3) == 0) {
		msgpack_pack_double(&pk, INFINITY);
		p->s += 3;
	} else if (strncmp(p->s, "-inf", 4) == 0) {
		msgpack_pack_double(&pk, -INFINITY);
		p->s += 4;
	} else
		spec_number(p, &pk);
	(*count)++;
}

/* Pack the notation s into sb (initialised here). */
static void
spec_pack(const char *s, msgpack_sbuffer *sb)
{
	struct spec p = { s, s };
	size_t n = 0;

	msgpack_sbuffer_init(sb);
	spec_value(&p, sb, &n);
	spec_ws(&p);
	if (*p.s != '\0')
		spec_fail(&p, "trailing text");
}

/* ---- fixtures ----------------------------------------------------------- */

#define ROOT "/srv/builds"
#define DEFAULT_IMAGE "localhost/debate-archiso:latest"
#define BASE "'id':'j1','profile':'prof','output':'out'"

static struct config cfg;

static int
setup(void **state)
{
	(void)state;
	config_defaults(&cfg);
	free(cfg.builds_root);
	cfg.builds_root = xstrdup(ROOT);
	strv_split(&cfg.images, "localhost/other:1 docker.io/library/archlinux:latest", " ");
	return 0;
}

static int
teardown(void **state)
{
	(void)state;
	config_free(&cfg);
	return 0;
}

/* Decode bytes; the caller frees js. */
static enum refusal
decode(const void *b, size_t n, struct job_spec *js, char *err, size_t errlen)
{
	err[0] = '\0';
	return payload_decode(b, n, &cfg, js, err, errlen);
}

/* Decode the notation s, which must be accepted. */
static void
decode_ok(const char *s, struct job_spec *js)
{
	msgpack_sbuffer sb;
	char err[ERR_MAX];
	enum refusal r;

	spec_pack(s, &sb);
	r = decode(sb.data, sb.size, js, err, sizeof err);
	msgpack_sbuffer_destroy(&sb);
	if (r != REFUSE_NONE) {
		payload_free(js);
		fail_msg("refused (%s: %s): %.300s", refusal_name(r), err, s);
	}
}

/* ---- valid jobs ------------------------------------------------------- */

static void
test_minimal_job(void **state)
{
	struct job_spec js;

	(void)state;
	decode_ok("{" BASE "}", &js);
	assert_string_equal(js.id, "j1");
	assert_string_equal(js.profile, "prof");
	assert_string_equal(js.output, "out");
	assert_false(js.has_epoch);
	assert_int_equal(js.source_date_epoch, 0);
	/* Everything else comes from worker.ini. */
	assert_int_equal(js.memory, 8ULL << 30);
	assert_true(js.cpus == 4);
	assert_true(js.timeout == 1200);
	assert_true(js.warning == 900);
	assert_int_equal(js.retries, 0);
	assert_string_equal(js.image, DEFAULT_IMAGE);
	assert_null(js.meta);
	assert_int_equal(js.meta_len, 0);
	payload_free(&js);
	assert_null(js.profile);
	assert_null(js.output);
	assert_null(js.image);

	/* Key order does not matter; unknown fields are ignored. */
	decode_ok("{'output':'o/x','colour':'blue','id':'Z9','nested':{'a':[1,2]},7:8,'profile':'p/q/'}", &js);
	assert_string_equal(js.id, "Z9");
	assert_string_equal(js.profile, "p/q/");
	assert_string_equal(js.output, "o/x");
	payload_free(&js);
}

/* The meta map of the full job, packed on its own (minimal encodings). */
#define FULL_META "{'user':7,'tags':['a','b'],'nested':{'x':-1,'y':1.25,'z':nil,'b':b'\\x00\\xff'},'ok':true}"

static void
test_full_job(void **state)
{
	static const char *const jobs[] = {
		"{'id':'build-42','profile':'profiles/releng','output':'out/build-42',"
		"'source_date_epoch':1700000000,'enqueued_at':1699999999.5,'memory':536870912,"
		"'cpus':2.5,'timeout':1800,'warning':600.5,'image':'localhost/other:1','retries':3,"
		"'meta':" FULL_META "}",
		"{'id':'build-42','profile':'profiles/releng','output':'out/build-42',"
		"'source_date_epoch':1700000000,'memory':'512m','cpus':2,'timeout':1800.0,"
		"'warning':600.5,'image':'localhost/other:1','retries':3,'meta':" FULL_META "}",
	};
	msgpack_sbuffer meta;

	(void)state;
	spec_pack(FULL_META, &meta);
	for (size_t i = 0; i < sizeof jobs / sizeof jobs[0]; i++) {
		struct job_spec js;
		msgpack_unpacked u;
		char err[ERR_MAX];

		decode_ok(jobs[i], &js);
		assert_string_equal(js.id, "build-42");
		assert_string_equal(js.profile, "profiles/releng");
		assert_string_equal(js.output, "out/build-42");
		assert_true(js.has_epoch);
		assert_int_equal(js.source_date_epoch, 1700000000);
		assert_int_equal(js.memory, 512ULL << 20);
		assert_true(js.cpus == (i == 0 ? 2.5 : 2.0));
		assert_true(js.timeout == 1800);
		assert_true(js.warning == 600.5);
		assert_string_equal(js.image, "localhost/other:1");
		assert_int_equal(js.retries, 3);

		/* meta: the same bytes, and they decode again. */
		assert_non_null(js.meta);
		assert_int_equal(js.meta_len, meta.size);
		assert_memory_equal(js.meta, meta.data, meta.size);
		msgpack_unpacked_init(&u);
		assert_int_equal(mp_unpack(js.meta, js.meta_len, MP_MAX_DEPTH, &u, err, sizeof err), 0);
		assert_int_equal(u.data.type, MSGPACK_OBJECT_MAP);
		assert_int_equal(mp_get(&u.data, "user")->via.u64, 7);
		assert_int_equal(mp_get(mp_get(&u.data, "nested"), "x")->via.i64, -1);
		assert_int_equal(mp_get(mp_get(&u.data, "nested"), "b")->via.bin.size, 2);
		msgpack_unpacked_destroy(&u);
		payload_free(&js);
		assert_null(js.meta);
	}
	msgpack_sbuffer_destroy(&meta);
}

static void
test_valid_variations(void **state)
{
	struct job_spec js;
	char id64[ID_MAX + 1];
	char spec[512];

	(void)state;
	/* The longest id. */
	memset(id64, 'a', ID_MAX);
	id64[ID_MAX] = '\0';
	snprintf(spec, sizeof spec, "{'id':'%s','profile':'p','output':'o'}", id64);
	decode_ok(spec, &js);
	assert_string_equal(js.id, id64);
	payload_free(&js);

	/* An absolute path inside builds_root is accepted and made relative. */
	decode_ok("{'id':'j1','profile':'" ROOT "/profiles/releng','output':'" ROOT "/out'}", &js);
	assert_string_equal(js.profile, "profiles/releng");
	assert_string_equal(js.output, "out");
	payload_free(&js);
	free(cfg.builds_root);
	cfg.builds_root = xstrdup(ROOT "//");	/* builds_root written with trailing slashes */
	decode_ok("{'id':'j1','profile':'" ROOT "/p','output':'o'}", &js);
	assert_string_equal(js.profile, "p");
	payload_free(&js);
	free(cfg.builds_root);
	cfg.builds_root = xstrdup(ROOT);

	/* Limits exactly at their bounds. */
	decode_ok("{" BASE ",'memory':'6m','cpus':0.01,'timeout':0.5,'warning':0}", &js);
	assert_int_equal(js.memory, 6ULL << 20);
	assert_true(js.cpus == 0.01);
	assert_true(js.timeout == 0.5);
	assert_true(js.warning == 0);
	payload_free(&js);
	decode_ok("{" BASE ",'memory':17179869184,'cpus':16,'timeout':14400,'warning':14400,'retries':10}", &js);
	assert_int_equal(js.memory, 16ULL << 30);
	assert_true(js.cpus == 16);
	assert_true(js.timeout == 14400);
	assert_true(js.warning == 14400);
	assert_int_equal(js.retries, 10);
	payload_free(&js);
	decode_ok("{" BASE ",'memory':'16g','cpus':1.5f,'retries':0}", &js);
	assert_int_equal(js.memory, 16ULL << 30);
	assert_true(js.cpus == 1.5);
	assert_int_equal(js.retries, 0);
	payload_free(&js);

	/* The epoch: 0 and the last second of 9999. */
	decode_ok("{" BASE ",'source_date_epoch':0}", &js);
	assert_true(js.has_epoch);
	assert_int_equal(js.source_date_epoch, 0);
	payload_free(&js);
	decode_ok("{" BASE ",'source_date_epoch':253402300799}", &js);
	assert_int_equal(js.source_date_epoch, 253402300799LL);
	payload_free(&js);
	/* Without it, enqueued_at is the default; source_date_epoch wins over it. */
	decode_ok("{" BASE ",'enqueued_at':1700000000.75}", &js);
	assert_true(js.has_epoch);
	assert_int_equal(js.source_date_epoch, 1700000000);
	payload_free(&js);
	decode_ok("{" BASE ",'enqueued_at':1700000000.75,'source_date_epoch':5}", &js);
	assert_int_equal(js.source_date_epoch, 5);
	payload_free(&js);

	/* warning defaults to 900, or 3/4 of a timeout not longer than that. */
	decode_ok("{" BASE ",'timeout':600}", &js);
	assert_true(js.warning == 450);
	payload_free(&js);
	decode_ok("{" BASE ",'timeout':1800}", &js);
	assert_true(js.warning == 900);
	payload_free(&js);

	/* Every allowed image: the default and the allow list. */
	decode_ok("{" BASE ",'image':'" DEFAULT_IMAGE "'}", &js);
	assert_string_equal(js.image, DEFAULT_IMAGE);
	payload_free(&js);
	decode_ok("{" BASE ",'image':'docker.io/library/archlinux:latest'}", &js);
	assert_string_equal(js.image, "docker.io/library/archlinux:latest");
	payload_free(&js);

	/* An empty meta map, a path of 1024 bytes and a component of 255. */
	decode_ok("{" BASE ",'meta':{}}", &js);
	assert_int_equal(js.meta_len, 1);
	assert_memory_equal(js.meta, "\x80", 1);
	payload_free(&js);
	decode_ok("{'id':'j1','profile':'a/'*511 + 'bc','output':'x'*255 + '/' + 'y'*255}", &js);
	assert_int_equal(strlen(js.profile), 1024);
	assert_int_equal(strlen(js.output), 511);
	payload_free(&js);
	/* Dots that are not "..". */
	decode_ok("{'id':'j1','profile':'...','output':'a/.b/..c/c..'}", &js);
	payload_free(&js);
}

/*
 * job_spec's profile and output are "relative to builds_root": an absolute
 * path inside it loses the builds_root prefix and every leading slash, so
 * "ROOT//etc" is "etc", never "/etc" (which a consumer that does not go
 * through path_resolve() would take for the host's /etc).
 */
static void
test_absolute_path_stays_relative(void **state)
{
	static const char *const specs[] = {
		"{'id':'j1','profile':'" ROOT "//etc','output':'o'}",
		"{'id':'j1','profile':'p','output':'" ROOT "///var/lib'}",
	};
	size_t bad = 0;

	(void)state;
	for (size_t i = 0; i < sizeof specs / sizeof specs[0]; i++) {
		msgpack_sbuffer sb;
		struct job_spec js;
		char err[ERR_MAX];

		spec_pack(specs[i], &sb);
		if (decode(sb.data, sb.size, &js, err, sizeof err) == REFUSE_NONE &&
		    (js.profile[0] == '/' || js.output[0] == '/')) {
			print_error("%s: accepted with profile \"%s\", output \"%s\"\n", specs[i], js.profile,
			    js.output);
			bad++;
		}
		payload_free(&js);
		msgpack_sbuffer_destroy(&sb);
	}
	assert_int_equal(bad, 0);
}

/* ---- hostile payloads ------------------------------------------------- */

struct hostile {
	const char *name;
	const char *spec;			/* the payload, or */
	void (*build)(msgpack_sbuffer *);	/* a function making it */
	size_t cut;				/* bytes dropped from the end */
	const char *tail;			/* raw bytes appended */
	size_t tail_len;
	unsigned char first, last;		/* when not 0: the first or last byte becomes this */
	enum refusal want;
	const char *frag;			/* the message names this */
	bool has_id;				/* js->id must come back as "j1" */
};

/* {BASE, 'meta': {'a': {'a': ... 1}}} nested 40 levels. */
static void
build_deep_meta(msgpack_sbuffer *sb)
{
	msgpack_packer pk;

	msgpack_sbuffer_init(sb);
	msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
	msgpack_pack_map(&pk, 4);
	mp_kv_str(&pk, "id", "j1");
	mp_kv_str(&pk, "profile", "p");
	mp_kv_str(&pk, "output", "o");
	mp_str(&pk, "meta");
	for (int i = 0; i < 40; i++) {
		msgpack_pack_map(&pk, 1);
		mp_str(&pk, "a");
	}
	msgpack_pack_int(&pk, 1);
}

/* A valid job with a 10 MiB blob. */
static void
build_10mib(msgpack_sbuffer *sb)
{
	msgpack_packer pk;
	char *blob = calloc(1, 10 << 20);

	msgpack_sbuffer_init(sb);
	msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
	msgpack_pack_map(&pk, 4);
	mp_kv_str(&pk, "id", "j1");
	mp_kv_str(&pk, "profile", "p");
	mp_kv_str(&pk, "output", "o");
	mp_str(&pk, "blob");
	msgpack_pack_bin(&pk, 10 << 20);
	msgpack_pack_bin_body(&pk, blob, 10 << 20);
	free(blob);
}

#define H(n, s, r, f) { .name = n, .spec = s, .want = r, .frag = f }
#define HI(n, s, r, f) { .name = n, .spec = s, .want = r, .frag = f, .has_id = true }

static const struct hostile hostile[] = {
	/* The id: absent, of the wrong type, or off the pattern. */
	H("id missing", "{'profile':'p','output':'o'}", REFUSE_MISSING, "id"),
	H("id key as bin", "{b'id':'j1','profile':'p','output':'o'}", REFUSE_MISSING, "id"),
	H("id int", "{'id':42,'profile':'p','output':'o'}", REFUSE_TYPE, "id"),
	H("id nil", "{'id':nil,'profile':'p','output':'o'}", REFUSE_TYPE, "id"),
	H("id bin", "{'id':b'j1','profile':'p','output':'o'}", REFUSE_TYPE, "id"),
	H("id array", "{'id':['j1'],'profile':'p','output':'o'}", REFUSE_TYPE, "id"),
	H("id ../x", "{'id':'../x','profile':'p','output':'o'}", REFUSE_ID, "id"),
	H("id a b;rm", "{'id':'a b;rm -rf /','profile':'p','output':'o'}", REFUSE_ID, "id"),
	H("id empty", "{'id':'','profile':'p','output':'o'}", REFUSE_ID, "id"),
	H("id 65 chars", "{'id':'a'*65,'profile':'p','output':'o'}", REFUSE_ID, "id"),
	H("id -x", "{'id':'-x','profile':'p','output':'o'}", REFUSE_ID, "id"),
	H("id é", "{'id':'\\xc3\\xa9','profile':'p','output':'o'}", REFUSE_ID, "id"),
	H("id with NUL", "{'id':'j1\\x00x','profile':'p','output':'o'}", REFUSE_ID, "id"),
	H("id $(cmd)", "{'id':'a$(reboot)','profile':'p','output':'o'}", REFUSE_ID, "id"),

	/* profile and output: absent, wrong type, or breaking a path rule. */
	HI("profile missing", "{'id':'j1','output':'o'}", REFUSE_MISSING, "profile"),
	HI("output missing", "{'id':'j1','profile':'p'}", REFUSE_MISSING, "output"),
	HI("profile int", "{'id':'j1','profile':1,'output':'o'}", REFUSE_TYPE, "profile"),
	HI("profile bin", "{'id':'j1','profile':b'p','output':'o'}", REFUSE_TYPE, "profile"),
	HI("profile nil", "{'id':'j1','profile':nil,'output':'o'}", REFUSE_TYPE, "profile"),
	HI("output array", "{'id':'j1','profile':'p','output':['o']}", REFUSE_TYPE, "output"),
	HI("output map", "{'id':'j1','profile':'p','output':{}}", REFUSE_TYPE, "output"),
	HI("profile ../etc", "{'id':'j1','profile':'../etc','output':'o'}", REFUSE_PATH, "profile"),
	HI("profile ..", "{'id':'j1','profile':'..','output':'o'}", REFUSE_PATH, "profile"),
	HI("output a/../../b", "{'id':'j1','profile':'p','output':'a/../../b'}", REFUSE_PATH, "output"),
	HI("output trailing ..", "{'id':'j1','profile':'p','output':'a/..'}", REFUSE_PATH, "output"),
	HI("profile /etc/passwd", "{'id':'j1','profile':'/etc/passwd','output':'o'}", REFUSE_PATH, "profile"),
	HI("output /tmp", "{'id':'j1','profile':'p','output':'/tmp'}", REFUSE_PATH, "output"),
	HI("profile builds_root itself", "{'id':'j1','profile':'" ROOT "','output':'o'}", REFUSE_PATH, "profile"),
	HI("profile builds_root/", "{'id':'j1','profile':'" ROOT "/','output':'o'}", REFUSE_PATH, "profile"),
	HI("profile sibling of builds_root", "{'id':'j1','profile':'" ROOT "-evil/x','output':'o'}", REFUSE_PATH,
	    "profile"),
	HI("profile absolute with ..", "{'id':'j1','profile':'" ROOT "/../etc','output':'o'}", REFUSE_PATH,
	    "profile"),
	HI("profile empty", "{'id':'j1','profile':'','output':'o'}", REFUSE_PATH, "profile"),
	HI("profile NUL byte", "{'id':'j1','profile':'p\\x00/../../etc','output':'o'}", REFUSE_PATH, "profile"),
	HI("output NUL byte", "{'id':'j1','profile':'p','output':'o\\x00'}", REFUSE_PATH, "output"),
	HI("output 2000 bytes", "{'id':'j1','profile':'p','output':'a/'*1000}", REFUSE_PATH, "output"),
	HI("profile 1025 bytes", "{'id':'j1','profile':'a'*1025,'output':'o'}", REFUSE_PATH, "profile"),
	HI("profile component 300", "{'id':'j1','profile':'a/' + 'b'*300 + '/c','output':'o'}", REFUSE_PATH,
	    "profile"),
	HI("output component 256", "{'id':'j1','profile':'p','output':'c'*256}", REFUSE_PATH, "output"),

	/* memory */
	HI("memory negative", "{" BASE ",'memory':-1}", REFUSE_VALUE, "memory"),
	HI("memory zero", "{" BASE ",'memory':0}", REFUSE_VALUE, "memory"),
	HI("memory below 6m", "{" BASE ",'memory':6291455}", REFUSE_VALUE, "memory"),
	HI("memory '512' bytes", "{" BASE ",'memory':'512'}", REFUSE_VALUE, "memory"),
	HI("memory huge", "{" BASE ",'memory':18446744073709551615}", REFUSE_LIMIT, "memory"),
	HI("memory over max", "{" BASE ",'memory':17179869185}", REFUSE_LIMIT, "memory"),
	HI("memory '17g'", "{" BASE ",'memory':'17g'}", REFUSE_LIMIT, "memory"),
	HI("memory '12q'", "{" BASE ",'memory':'12q'}", REFUSE_VALUE, "memory"),
	HI("memory '-1g'", "{" BASE ",'memory':'-1g'}", REFUSE_VALUE, "memory"),
	HI("memory ''", "{" BASE ",'memory':''}", REFUSE_VALUE, "memory"),
	HI("memory long string", "{" BASE ",'memory':'1'*40}", REFUSE_VALUE, "memory"),
	/* Like the path fields, a NUL byte is named as such (and the message is not left unset). */
	HI("memory NUL", "{" BASE ",'memory':'8g\\x00x'}", REFUSE_VALUE, "NUL"),
	HI("memory overflowing size", "{" BASE ",'memory':'99999999999t'}", REFUSE_VALUE, "memory"),
	HI("memory float", "{" BASE ",'memory':1.5}", REFUSE_TYPE, "memory"),
	HI("memory bool", "{" BASE ",'memory':true}", REFUSE_TYPE, "memory"),

	/* cpus */
	HI("cpus zero", "{" BASE ",'cpus':0}", REFUSE_VALUE, "cpus"),
	HI("cpus 0.001", "{" BASE ",'cpus':0.001}", REFUSE_VALUE, "cpus"),
	HI("cpus negative", "{" BASE ",'cpus':-2}", REFUSE_VALUE, "cpus"),
	HI("cpus NaN", "{" BASE ",'cpus':nan}", REFUSE_VALUE, "cpus"),
	HI("cpus inf", "{" BASE ",'cpus':inf}", REFUSE_VALUE, "cpus"),
	HI("cpus over max", "{" BASE ",'cpus':16.5}", REFUSE_LIMIT, "cpus"),
	HI("cpus huge", "{" BASE ",'cpus':18446744073709551615}", REFUSE_LIMIT, "cpus"),
	HI("cpus 'four'", "{" BASE ",'cpus':'four'}", REFUSE_TYPE, "cpus"),
	HI("cpus nil", "{" BASE ",'cpus':nil}", REFUSE_TYPE, "cpus"),

	/* timeout and warning */
	HI("timeout zero", "{" BASE ",'timeout':0}", REFUSE_VALUE, "timeout"),
	HI("timeout negative", "{" BASE ",'timeout':-5}", REFUSE_VALUE, "timeout"),
	HI("timeout NaN", "{" BASE ",'timeout':nan}", REFUSE_VALUE, "timeout"),
	HI("timeout -inf", "{" BASE ",'timeout':-inf}", REFUSE_VALUE, "timeout"),
	HI("timeout over max", "{" BASE ",'timeout':14400.5}", REFUSE_LIMIT, "timeout"),
	HI("timeout '1h'", "{" BASE ",'timeout':'1h'}", REFUSE_TYPE, "timeout"),
	HI("warning after timeout", "{" BASE ",'timeout':600,'warning':601}", REFUSE_VALUE, "warning"),
	HI("warning after default timeout", "{" BASE ",'warning':1200.5}", REFUSE_VALUE, "warning"),
	HI("warning negative", "{" BASE ",'warning':-1}", REFUSE_VALUE, "warning"),
	HI("warning NaN", "{" BASE ",'warning':nan}", REFUSE_VALUE, "warning"),
	HI("warning bool", "{" BASE ",'warning':true}", REFUSE_TYPE, "warning"),

	/* source_date_epoch and enqueued_at */
	HI("epoch negative", "{" BASE ",'source_date_epoch':-1}", REFUSE_VALUE, "source_date_epoch"),
	HI("epoch after 9999", "{" BASE ",'source_date_epoch':253402300800}", REFUSE_VALUE, "source_date_epoch"),
	HI("epoch uint64 max", "{" BASE ",'source_date_epoch':18446744073709551615}", REFUSE_VALUE,
	    "source_date_epoch"),
	HI("epoch float", "{" BASE ",'source_date_epoch':1700000000.5}", REFUSE_TYPE, "source_date_epoch"),
	HI("epoch string", "{" BASE ",'source_date_epoch':'1700000000'}", REFUSE_TYPE, "source_date_epoch"),
	HI("enqueued_at string", "{" BASE ",'enqueued_at':'yesterday'}", REFUSE_TYPE, "enqueued_at"),

	/* retries */
	HI("retries 11", "{" BASE ",'retries':11}", REFUSE_LIMIT, "retries"),
	HI("retries huge", "{" BASE ",'retries':18446744073709551615}", REFUSE_LIMIT, "retries"),
	HI("retries -1", "{" BASE ",'retries':-1}", REFUSE_VALUE, "retries"),
	HI("retries float", "{" BASE ",'retries':1.0}", REFUSE_TYPE, "retries"),
	HI("retries string", "{" BASE ",'retries':'3'}", REFUSE_TYPE, "retries"),

	/* image */
	HI("image not allowed", "{" BASE ",'image':'docker.io/evil/miner:latest'}", REFUSE_IMAGE, "image"),
	HI("image prefix of allowed", "{" BASE ",'image':'localhost/other'}", REFUSE_IMAGE, "image"),
	HI("image empty", "{" BASE ",'image':''}", REFUSE_IMAGE, "image"),
	HI("image NUL suffix", "{" BASE ",'image':'" DEFAULT_IMAGE "\\x00evil'}", REFUSE_IMAGE, "image"),
	HI("image int", "{" BASE ",'image':5}", REFUSE_TYPE, "image"),
	HI("image array", "{" BASE ",'image':['" DEFAULT_IMAGE "']}", REFUSE_TYPE, "image"),

	/* meta */
	HI("meta array", "{" BASE ",'meta':[1,2]}", REFUSE_TYPE, "meta"),
	HI("meta string", "{" BASE ",'meta':'x'}", REFUSE_TYPE, "meta"),
	HI("meta nil", "{" BASE ",'meta':nil}", REFUSE_TYPE, "meta"),

	/* Not a map at the top. */
	H("top-level array", "['j1','p','o']", REFUSE_NOT_MAP, "map"),
	H("top-level string", "'{}'", REFUSE_NOT_MAP, "map"),
	H("top-level int", "42", REFUSE_NOT_MAP, "map"),
	H("top-level nil", "nil", REFUSE_NOT_MAP, "map"),
	H("top-level bin", "b'\\x81'", REFUSE_NOT_MAP, "map"),

	/* Not exactly one msgpack object. */
	{ .name = "truncated by one byte", .spec = "{" BASE "}", .cut = 1, .want = REFUSE_MALFORMED,
	    .frag = "truncated" },
	{ .name = "truncated by half", .spec = "{" BASE ",'meta':{'a':[1,2,3]}}", .cut = 20,
	    .want = REFUSE_MALFORMED, .frag = "payload" },
	{ .name = "only the map header", .spec = "{" BASE "}", .cut = 30, .want = REFUSE_MALFORMED,
	    .frag = "payload" },
	{ .name = "trailing garbage", .spec = "{" BASE "}", .tail = "\xc0garbage", .tail_len = 8,
	    .want = REFUSE_MALFORMED, .frag = "trailing" },
	{ .name = "two jobs", .spec = "{" BASE "}", .tail = "\x81\xa2id\xa2j2", .tail_len = 7,
	    .want = REFUSE_MALFORMED, .frag = "trailing" },
	{ .name = "0xc1 byte as a value", .spec = "{" BASE ",'x':nil}", .last = 0xc1,
	    .want = REFUSE_MALFORMED, .frag = "0xc1" },
	{ .name = "map announcing more than there is", .spec = "{" BASE "}", .first = 0x8f,
	    .want = REFUSE_MALFORMED, .frag = "payload" },
	{ .name = "ext8 value then a trailing byte", .spec = "{" BASE ",'e':0}", .cut = 1,
	    .tail = "\xc7\x00\x01\x07", .tail_len = 4, .want = REFUSE_MALFORMED, .frag = "payload" },
	H("empty payload", "", REFUSE_MALFORMED, "payload"),
	{ .name = "meta nested 40 levels", .build = build_deep_meta, .want = REFUSE_TOO_DEEP,
	    .frag = "nested" },
	{ .name = "10 MiB blob", .build = build_10mib, .want = REFUSE_TOO_LARGE, .frag = "max_payload" },
};

/* The payload of case h: its notation packed, patched, cut and extended. */
static void
hostile_bytes(const struct hostile *h, msgpack_sbuffer *sb)
{
	if (h->build != NULL)
		h->build(sb);
	else if (h->spec[0] == '\0')
		msgpack_sbuffer_init(sb);
	else
		spec_pack(h->spec, sb);
	if (h->first)
		sb->data[0] = (char)h->first;
	if (h->last)
		sb->data[sb->size - 1] = (char)h->last;
	assert_true(h->cut <= sb->size);
	sb->size -= h->cut;
	if (h->tail_len > 0)
		msgpack_sbuffer_write(sb, h->tail, h->tail_len);
}

static void
test_hostile_payloads(void **state)
{
	size_t n = 0, bad = 0;

	(void)state;
	for (size_t i = 0; i < sizeof hostile / sizeof hostile[0]; i++) {
		const struct hostile *h = &hostile[i];
		msgpack_sbuffer sb;
		struct job_spec js;
		char err[ERR_MAX];
		enum refusal r;

		hostile_bytes(h, &sb);
		/* An empty reply from Redis is "", not NULL. */
		r = decode(sb.data ? sb.data : "", sb.size, &js, err, sizeof err);
		n++;
		if (r != h->want) {
			print_error("%s: got %s (%s), want %s\n", h->name, refusal_name(r), err,
			    refusal_name(h->want));
			bad++;
		} else if (strstr(err, h->frag) == NULL) {
			print_error("%s: message \"%s\" does not name \"%s\"\n", h->name, err, h->frag);
			bad++;
		} else if (strcmp(js.id, h->has_id ? "j1" : "") != 0) {
			print_error("%s: js->id is \"%s\", want \"%s\"\n", h->name, js.id, h->has_id ? "j1" : "");
			bad++;
		}
		payload_free(&js);
		msgpack_sbuffer_destroy(&sb);
	}
	assert_true(n >= 40);
	assert_int_equal(bad, 0);
}

/*
 * A refusal message ends up in the worker's log lines and the dead
 * letter's error field: payload bytes quoted in it must not carry control
 * characters (a newline would forge a log line, ESC drives terminals).
 */
static void
test_messages_have_no_control_chars(void **state)
{
	static const char *const payloads[] = {
		"{" BASE ",'image':'x\\x0a2024-01-01T00:00:00Z worker[1] notice: job j2 succeeded'}",
		"{" BASE ",'image':'\\x1b[2J\\x1b[31mevil'}",
		"{" BASE ",'memory':'1\\x0a2'}",
		"{'id':'j1','profile':'/etc\\x0d\\x0afake','output':'o'}",
	};
	size_t bad = 0;

	(void)state;
	for (size_t i = 0; i < sizeof payloads / sizeof payloads[0]; i++) {
		msgpack_sbuffer sb;
		struct job_spec js;
		char err[ERR_MAX];
		enum refusal r;

		spec_pack(payloads[i], &sb);
		r = decode(sb.data, sb.size, &js, err, sizeof err);
		if (r == REFUSE_NONE) {
			print_error("payload %zu was accepted\n", i);
			bad++;
		}
		for (const char *c = err; r != REFUSE_NONE && *c; c++) {
			if ((unsigned char)*c < 0x20 || *c == 0x7f) {
				print_error("payload %zu: message has byte 0x%02x: %s\n", i, (unsigned char)*c, err);
				bad++;
				break;
			}
		}
		payload_free(&js);
		msgpack_sbuffer_destroy(&sb);
	}
	assert_int_equal(bad, 0);
}

/* max_payload is a bound on the bytes: exactly at it is fine. */
static void
test_payload_size_boundary(void **state)
{
	msgpack_sbuffer sb;
	struct job_spec js;
	char err[ERR_MAX];
	uint64_t saved = cfg.max_payload;

	(void)state;
	spec_pack("{" BASE ",'pad':b'x'*1000}", &sb);
	cfg.max_payload = sb.size;
	assert_int_equal(decode(sb.data, sb.size, &js, err, sizeof err), REFUSE_NONE);
	payload_free(&js);
	cfg.max_payload = sb.size - 1;
	assert_int_equal(decode(sb.data, sb.size, &js, err, sizeof err), REFUSE_TOO_LARGE);
	assert_non_null(strstr(err, "max_payload"));
	payload_free(&js);
	cfg.max_payload = saved;
	msgpack_sbuffer_destroy(&sb);
}

/* The worker marks {NS}:job:<id> dead when the id was readable. */
static void
test_id_filled_on_refusal(void **state)
{
	msgpack_sbuffer sb;
	struct job_spec js;
	char err[ERR_MAX];

	(void)state;
	spec_pack("{'id':'job-7','profile':'p','output':'o','image':'evil','cpus':2}", &sb);
	assert_int_equal(decode(sb.data, sb.size, &js, err, sizeof err), REFUSE_IMAGE);
	assert_string_equal(js.id, "job-7");
	payload_free(&js);
	msgpack_sbuffer_destroy(&sb);

	spec_pack("{'cpus':'x','output':'o','id':'job-8','profile':'p'}", &sb);
	assert_int_equal(decode(sb.data, sb.size, &js, err, sizeof err), REFUSE_TYPE);
	assert_string_equal(js.id, "job-8");
	payload_free(&js);
	msgpack_sbuffer_destroy(&sb);

	/* A bad id is never copied. */
	spec_pack("{'id':'../../x','profile':'p','output':'o'}", &sb);
	assert_int_equal(decode(sb.data, sb.size, &js, err, sizeof err), REFUSE_ID);
	assert_string_equal(js.id, "");
	payload_free(&js);
	msgpack_sbuffer_destroy(&sb);
}

/* Producers may put msgpack timestamps (ext -1) in meta, as Python's msgpack does. */
static void
test_meta_with_timestamp(void **state)
{
	msgpack_sbuffer sb;
	msgpack_packer pk;
	struct job_spec js;
	char err[ERR_MAX];
	enum refusal r;

	(void)state;
	msgpack_sbuffer_init(&sb);
	msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
	msgpack_pack_map(&pk, 4);
	mp_kv_str(&pk, "id", "j1");
	mp_kv_str(&pk, "profile", "p");
	mp_kv_str(&pk, "output", "o");
	mp_str(&pk, "meta");
	msgpack_pack_map(&pk, 2);
	mp_str(&pk, "t32");
	msgpack_pack_ext(&pk, 4, -1);	/* fixext4: timestamp32 */
	msgpack_pack_ext_body(&pk, "\x65\x53\xf1\x00", 4);
	mp_str(&pk, "t96");
	msgpack_pack_ext(&pk, 12, -1);	/* ext8: timestamp96 */
	msgpack_pack_ext_body(&pk, "\x00\x00\x00\x01\x00\x00\x00\x00\x65\x53\xf1\x00", 12);
	r = decode(sb.data, sb.size, &js, err, sizeof err);
	payload_free(&js);
	msgpack_sbuffer_destroy(&sb);
	if (r != REFUSE_NONE)
		fail_msg("a job whose meta holds a timestamp96 (ext8) was refused: %s: %s", refusal_name(r), err);
}

/* payload_encode writes what payload_decode reads back, for every optional field. */
static void
test_encode_round_trip(void **state)
{
	(void)state;
	for (int mask = 0; mask < 16; mask++) {
		struct job_spec in = { 0 }, out;
		msgpack_sbuffer sb, meta;
		char err[ERR_MAX];
		enum refusal r;

		snprintf(in.id, sizeof in.id, "enc-%d", mask);
		in.profile = xstrdup("profiles/releng");
		in.output = xstrdup("out/x");
		in.memory = 4ULL << 30;
		in.cpus = 2.5;
		in.timeout = 1800;
		in.warning = 1200;
		if (mask & 1) {
			in.has_epoch = true;
			in.source_date_epoch = 1700000000;
		}
		if (mask & 2)
			in.image = xstrdup("localhost/other:1");
		if (mask & 4) {
			spec_pack("{'k':[1,'v',nil]}", &meta);
			in.meta = meta.data;
			in.meta_len = meta.size;
		}
		if (mask & 8)
			in.retries = 2;
		msgpack_sbuffer_init(&sb);
		payload_encode(&in, &sb);
		r = decode(sb.data, sb.size, &out, err, sizeof err);
		if (r != REFUSE_NONE) {
			payload_free(&out);
			payload_free(&in);
			msgpack_sbuffer_destroy(&sb);
			fail_msg("mask %d: payload_encode output refused: %s: %s", mask, refusal_name(r), err);
		}
		assert_string_equal(out.id, in.id);
		assert_string_equal(out.profile, in.profile);
		assert_string_equal(out.output, in.output);
		assert_int_equal(out.memory, in.memory);
		assert_true(out.cpus == in.cpus);
		assert_true(out.timeout == in.timeout);
		assert_true(out.warning == in.warning);
		assert_int_equal(out.has_epoch, in.has_epoch);
		assert_int_equal(out.source_date_epoch, in.source_date_epoch);
		assert_string_equal(out.image, in.image ? in.image : DEFAULT_IMAGE);
		assert_int_equal(out.retries, in.retries);
		assert_int_equal(out.meta_len, in.meta_len);
		if (in.meta)
			assert_memory_equal(out.meta, in.meta, in.meta_len);
		payload_free(&out);
		payload_free(&in);
		msgpack_sbuffer_destroy(&sb);
	}
}

/* ---- names ------------------------------------------------------------ */

/* The dead-letter reasons of PROTOCOL.md, in enum order. */
static const char *const refusal_names[] = {
	[REFUSE_TOO_LARGE] = "payload_too_large",
	[REFUSE_MALFORMED] = "malformed",
	[REFUSE_TOO_DEEP] = "too_deep",
	[REFUSE_NOT_MAP] = "not_a_map",
	[REFUSE_MISSING] = "missing_field",
	[REFUSE_TYPE] = "wrong_type",
	[REFUSE_VALUE] = "bad_value",
	[REFUSE_ID] = "bad_id",
	[REFUSE_PATH] = "bad_path",
	[REFUSE_IMAGE] = "image_not_allowed",
	[REFUSE_LIMIT] = "over_limit",
	[REFUSE_CLAIM] = "claim_failed",
	[REFUSE_ARCHIVE] = "bad_archive",
};

/* shared/PROTOCOL.md, found from this source file's place in the tree. */
static char *
read_protocol(void)
{
	static const char *const tries[] = { "shared/PROTOCOL.md", "../shared/PROTOCOL.md",
		"../../shared/PROTOCOL.md" };
	char path[4096];
	const char *slash = strrchr(__FILE__, '/');
	FILE *f = NULL;
	char *text;
	long n;

	if (slash != NULL) {
		snprintf(path, sizeof path, "%.*s/../../shared/PROTOCOL.md", (int)(slash - __FILE__), __FILE__);
		f = fopen(path, "r");
	}
	for (size_t i = 0; f == NULL && i < sizeof tries / sizeof tries[0]; i++)
		f = fopen(tries[i], "r");
	if (f == NULL)
		fail_msg("cannot find shared/PROTOCOL.md (run from the repository's top directory)");
	fseek(f, 0, SEEK_END);
	n = ftell(f);
	rewind(f);
	text = calloc(1, (size_t)n + 1);
	assert_int_equal(fread(text, 1, (size_t)n, f), (size_t)n);
	fclose(f);
	return text;
}

static void
test_refusal_names(void **state)
{
	const char *dead;
	char *doc, row[64];

	(void)state;
	assert_string_equal(refusal_name(REFUSE_NONE), "none");
	for (int r = REFUSE_TOO_LARGE; r <= REFUSE_ARCHIVE; r++)
		assert_string_equal(refusal_name((enum refusal)r), refusal_names[r]);
	assert_string_equal(refusal_name((enum refusal)99), "unknown");

	/* Each is a row of the dead-letter table in PROTOCOL.md. */
	doc = read_protocol();
	dead = strstr(doc, "## Dead letters");
	assert_non_null(dead);
	for (int r = REFUSE_TOO_LARGE; r <= REFUSE_ARCHIVE; r++) {
		snprintf(row, sizeof row, "\n| `%s` |", refusal_names[r]);
		if (strstr(dead, row) == NULL)
			fail_msg("PROTOCOL.md's dead-letter table has no row for `%s`", refusal_names[r]);
	}
	free(doc);
}

static void
test_status_names(void **state)
{
	static const char *const names[] = { "queued", "running", "succeeded", "failed", "timed_out",
		"oom_killed", "cancelled", "error", "dead" };
	enum status st;

	(void)state;
	assert_int_equal(sizeof names / sizeof names[0], ST_DEAD + 1);
	for (int s = ST_QUEUED; s <= ST_DEAD; s++) {
		assert_string_equal(status_name((enum status)s), names[s]);
		st = (enum status)-1;
		assert_int_equal(status_parse(names[s], &st), 0);
		assert_int_equal(st, s);
	}
	assert_int_equal(status_parse("SUCCEEDED", &st), -1);
	assert_int_equal(status_parse("", &st), -1);
	assert_int_equal(status_parse("succeeded ", &st), -1);
	assert_int_equal(status_parse("unknown", &st), -1);
	assert_string_equal(status_name((enum status)(ST_DEAD + 1)), "unknown");
	assert_string_equal(status_name((enum status)-1), "unknown");
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_minimal_job),
		cmocka_unit_test(test_full_job),
		cmocka_unit_test(test_valid_variations),
		cmocka_unit_test(test_absolute_path_stays_relative),
		cmocka_unit_test(test_hostile_payloads),
		cmocka_unit_test(test_messages_have_no_control_chars),
		cmocka_unit_test(test_payload_size_boundary),
		cmocka_unit_test(test_id_filled_on_refusal),
		cmocka_unit_test(test_meta_with_timestamp),
		cmocka_unit_test(test_encode_round_trip),
		cmocka_unit_test(test_refusal_names),
		cmocka_unit_test(test_status_names),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
