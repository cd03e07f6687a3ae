/*
 * mpack.c: small helpers over msgpack-c: packing key/value pairs, reading
 * fields of a decoded map, a bounded pre-check of untrusted bytes, and a
 * JSON printer for the command line.
 */
#include <math.h>
#include <string.h>

#include "debate.h"

/* Pack a C string. */
void
mp_str(msgpack_packer *pk, const char *s)
{
	mp_strn(pk, s, strlen(s));
}

/* Pack n bytes as a str. */
void
mp_strn(msgpack_packer *pk, const char *s, size_t n)
{
	msgpack_pack_str(pk, n);
	msgpack_pack_str_body(pk, s, n);
}

/* Pack "k": "v". */
void
mp_kv_str(msgpack_packer *pk, const char *k, const char *v)
{
	mp_str(pk, k);
	mp_str(pk, v ? v : "");
}

/* Pack "k": signed integer. */
void
mp_kv_int(msgpack_packer *pk, const char *k, int64_t v)
{
	mp_str(pk, k);
	msgpack_pack_int64(pk, v);
}

/* Pack "k": unsigned integer. */
void
mp_kv_uint(msgpack_packer *pk, const char *k, uint64_t v)
{
	mp_str(pk, k);
	msgpack_pack_uint64(pk, v);
}

/* Pack "k": float. */
void
mp_kv_double(msgpack_packer *pk, const char *k, double v)
{
	mp_str(pk, k);
	msgpack_pack_double(pk, v);
}

/* Pack "k": true/false. */
void
mp_kv_bool(msgpack_packer *pk, const char *k, bool v)
{
	mp_str(pk, k);
	if (v)
		msgpack_pack_true(pk);
	else
		msgpack_pack_false(pk);
}

/* Pack "k": nil. */
void
mp_kv_nil(msgpack_packer *pk, const char *k)
{
	mp_str(pk, k);
	msgpack_pack_nil(pk);
}

/* The value under a str key in map o. */
const msgpack_object *
mp_get(const msgpack_object *o, const char *key)
{
	size_t kl = strlen(key);

	if (o == NULL || o->type != MSGPACK_OBJECT_MAP)
		return NULL;
	for (uint32_t i = 0; i < o->via.map.size; i++) {
		const msgpack_object *k = &o->via.map.ptr[i].key;
		if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == kl &&
		    memcmp(k->via.str.ptr, key, kl) == 0)
			return &o->via.map.ptr[i].val;
	}
	return NULL;
}

/* Copy a str field into buf. */
bool
mp_get_str(const msgpack_object *o, const char *key, char *buf, size_t len)
{
	const msgpack_object *v = mp_get(o, key);

	if (v == NULL || v->type != MSGPACK_OBJECT_STR || v->via.str.size >= len)
		return false;
	memcpy(buf, v->via.str.ptr, v->via.str.size);
	buf[v->via.str.size] = '\0';
	return true;
}

/* Read a numeric field (int or float) as a double. */
bool
mp_get_num(const msgpack_object *o, const char *key, double *out)
{
	const msgpack_object *v = mp_get(o, key);

	if (v == NULL)
		return false;
	switch (v->type) {
	case MSGPACK_OBJECT_POSITIVE_INTEGER: *out = (double)v->via.u64; return true;
	case MSGPACK_OBJECT_NEGATIVE_INTEGER: *out = (double)v->via.i64; return true;
	case MSGPACK_OBJECT_FLOAT32:
	case MSGPACK_OBJECT_FLOAT64: *out = v->via.f64; return true;
	default: return false;
	}
}

/* Read a big-endian integer of n bytes. */
static uint64_t
mp_be(const unsigned char *p, int n)
{
	uint64_t v = 0;

	for (int i = 0; i < n; i++)
		v = (v << 8) | p[i];
	return v;
}

/*
 * Walk the encoding without allocating: a stack of how many elements each
 * open container still expects.  A container may not announce more
 * elements than bytes remain, since each element takes at least one.
 */
int
mp_precheck(const char *buf, size_t len, int max_depth, char *err, size_t errlen)
{
	const unsigned char *p = (const unsigned char *)buf, *end = p + len;
	uint64_t want[MP_MAX_DEPTH + 2];
	int depth = 0;

	if (max_depth > MP_MAX_DEPTH)
		max_depth = MP_MAX_DEPTH;
	want[0] = 1;
	while (depth >= 0) {
		uint64_t n = 0, skip = 0, elems = 0;
		int hdr = 1;
		unsigned char b;

		if (want[depth] == 0) {
			depth--;
			continue;
		}
		if (p >= end) {
			snprintf(err, errlen, "truncated msgpack (%zu bytes)", len);
			return -1;
		}
		want[depth]--;
		b = *p;
		if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3)
			;
		else if (b >= 0x80 && b <= 0x8f)
			elems = 2 * (uint64_t)(b & 0x0f);
		else if (b >= 0x90 && b <= 0x9f)
			elems = b & 0x0f;
		else if (b >= 0xa0 && b <= 0xbf)
			skip = b & 0x1f;
		else {
			switch (b) {
			case 0xc4: case 0xd9: hdr = 2; n = 1; break;
			case 0xc5: case 0xda: hdr = 3; n = 2; break;
			case 0xc6: case 0xdb: hdr = 5; n = 4; break;
			case 0xc7: hdr = 3; n = 1; break;	/* marker, length, type */
			case 0xc8: hdr = 4; n = 2; break;
			case 0xc9: hdr = 6; n = 4; break;
			case 0xca: skip = 4; break;
			case 0xcb: skip = 8; break;
			case 0xcc: case 0xd0: skip = 1; break;
			case 0xcd: case 0xd1: skip = 2; break;
			case 0xce: case 0xd2: skip = 4; break;
			case 0xcf: case 0xd3: skip = 8; break;
			case 0xd4: skip = 2; break;
			case 0xd5: skip = 3; break;
			case 0xd6: skip = 5; break;
			case 0xd7: skip = 9; break;
			case 0xd8: skip = 17; break;
			case 0xdc: hdr = 3; n = 2; elems = 1; break;
			case 0xdd: hdr = 5; n = 4; elems = 1; break;
			case 0xde: hdr = 3; n = 2; elems = 2; break;
			case 0xdf: hdr = 5; n = 4; elems = 2; break;
			default:
				snprintf(err, errlen, "invalid msgpack byte 0x%02x at offset %zu", b,
				    (size_t)(p - (const unsigned char *)buf));
				return -1;
			}
		}
		if ((size_t)(end - p) < (size_t)hdr) {
			snprintf(err, errlen, "truncated msgpack (%zu bytes)", len);
			return -1;
		}
		if (n > 0) {
			uint64_t v = mp_be(p + 1, (int)n);
			if (b >= 0xdc && b <= 0xdf)
				elems *= v;	/* array: 1 per item, map: 2 */
			else
				skip += v;
		}
		p += hdr;
		if (skip > (uint64_t)(end - p)) {
			snprintf(err, errlen, "truncated msgpack (%zu bytes)", len);
			return -1;
		}
		p += skip;
		if (elems > 0) {
			if (elems > (uint64_t)(end - p)) {
				snprintf(err, errlen, "msgpack container announces %llu elements in %zu bytes",
				    (unsigned long long)elems, (size_t)(end - p));
				return -1;
			}
			if (depth + 1 >= max_depth) {
				snprintf(err, errlen, "nested deeper than %d levels", max_depth);
				return -2;
			}
			want[++depth] = elems;
		}
	}
	if (p != end) {
		snprintf(err, errlen, "%zu trailing bytes after the msgpack object", (size_t)(end - p));
		return -1;
	}
	return 0;
}

/* Pre-check then unpack buf into out (which the caller destroys). */
int
mp_unpack(const char *buf, size_t len, int max_depth, msgpack_unpacked *out, char *err, size_t errlen)
{
	size_t off = 0;
	int rc = mp_precheck(buf, len, max_depth, err, errlen);

	if (rc != 0)
		return rc;
	if (msgpack_unpack_next(out, buf, len, &off) != MSGPACK_UNPACK_SUCCESS || off != len) {
		snprintf(err, errlen, "msgpack could not be unpacked");
		return -1;
	}
	return 0;
}

/* Write n bytes as a JSON string; bin escapes every byte above 0x7e too. */
static void
mp_json_str(FILE *f, const char *s, size_t n, bool bin)
{
	fputc('"', f);
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		switch (c) {
		case '"': fputs("\\\"", f); break;
		case '\\': fputs("\\\\", f); break;
		case '\n': fputs("\\n", f); break;
		case '\r': fputs("\\r", f); break;
		case '\t': fputs("\\t", f); break;
		default:
			if (c < 0x20 || c == 0x7f || (bin && c > 0x7f))
				fprintf(f, "\\u%04x", c);
			else
				fputc(c, f);
		}
	}
	fputc('"', f);
}

/* Print o as JSON (maps with non-string keys get their keys stringified). */
void
mp_json(FILE *f, const msgpack_object *o)
{
	switch (o->type) {
	case MSGPACK_OBJECT_NIL: fputs("null", f); break;
	case MSGPACK_OBJECT_BOOLEAN: fputs(o->via.boolean ? "true" : "false", f); break;
	case MSGPACK_OBJECT_POSITIVE_INTEGER: fprintf(f, "%llu", (unsigned long long)o->via.u64); break;
	case MSGPACK_OBJECT_NEGATIVE_INTEGER: fprintf(f, "%lld", (long long)o->via.i64); break;
	case MSGPACK_OBJECT_FLOAT32:
	case MSGPACK_OBJECT_FLOAT64:
		if (isfinite(o->via.f64))
			fprintf(f, "%.17g", o->via.f64);
		else
			fputs("null", f);	/* JSON has no NaN or infinity */
		break;
	case MSGPACK_OBJECT_STR: mp_json_str(f, o->via.str.ptr, o->via.str.size, false); break;
	case MSGPACK_OBJECT_BIN: mp_json_str(f, o->via.bin.ptr, o->via.bin.size, true); break;
	case MSGPACK_OBJECT_EXT: fputs("null", f); break;
	case MSGPACK_OBJECT_ARRAY:
		fputc('[', f);
		for (uint32_t i = 0; i < o->via.array.size; i++) {
			if (i)
				fputc(',', f);
			mp_json(f, &o->via.array.ptr[i]);
		}
		fputc(']', f);
		break;
	case MSGPACK_OBJECT_MAP:
		fputc('{', f);
		for (uint32_t i = 0; i < o->via.map.size; i++) {
			const msgpack_object *k = &o->via.map.ptr[i].key;
			if (i)
				fputc(',', f);
			if (k->type == MSGPACK_OBJECT_STR)
				mp_json_str(f, k->via.str.ptr, k->via.str.size, false);
			else {
				fputc('"', f);
				mp_json(f, k);	/* numbers print bare inside the quotes */
				fputc('"', f);
			}
			fputc(':', f);
			mp_json(f, &o->via.map.ptr[i].val);
		}
		fputc('}', f);
		break;
	}
}
