/*
 * payload.c: a build job on the wire.  payload_decode() is the one gate every
 * payload passes: it refuses with a reason (PROTOCOL.md lists them) and a
 * message naming the field, and nothing it accepts can name a path outside
 * builds_root, an image off the allow list, or limits over the maxima.
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "debate.h"

#define PATH_FIELD_MAX 1024	/* longest profile/output accepted */
#define MIN_MEMORY (6ULL << 20)	/* docker refuses less */
#define UPLOAD_URL_MAX 2048
#define UPLOAD_HEADERS_MAX 32
#define UPLOAD_HEADER_MAX 4096

/* The wire name of a refusal. */
const char *
refusal_name(enum refusal r)
{
	switch (r) {
	case REFUSE_NONE: return "none";
	case REFUSE_TOO_LARGE: return "payload_too_large";
	case REFUSE_MALFORMED: return "malformed";
	case REFUSE_TOO_DEEP: return "too_deep";
	case REFUSE_NOT_MAP: return "not_a_map";
	case REFUSE_MISSING: return "missing_field";
	case REFUSE_TYPE: return "wrong_type";
	case REFUSE_VALUE: return "bad_value";
	case REFUSE_ID: return "bad_id";
	case REFUSE_PATH: return "bad_path";
	case REFUSE_IMAGE: return "image_not_allowed";
	case REFUSE_LIMIT: return "over_limit";
	case REFUSE_CLAIM: return "claim_failed";
	case REFUSE_ARCHIVE: return "bad_archive";
	}
	return "unknown";
}

static const char *status_names[] = {
	[ST_QUEUED] = "queued", [ST_RUNNING] = "running", [ST_SUCCEEDED] = "succeeded",
	[ST_FAILED] = "failed", [ST_TIMED_OUT] = "timed_out", [ST_OOM_KILLED] = "oom_killed",
	[ST_CANCELLED] = "cancelled", [ST_ERROR] = "error", [ST_DEAD] = "dead",
};

/* The wire name of a status. */
const char *
status_name(enum status s)
{
	if ((size_t)s < sizeof status_names / sizeof status_names[0])
		return status_names[s];
	return "unknown";
}

/* Parse a status name. */
int
status_parse(const char *s, enum status *out)
{
	for (size_t i = 0; i < sizeof status_names / sizeof status_names[0]; i++) {
		if (strcmp(s, status_names[i]) == 0) {
			*out = (enum status)i;
			return 0;
		}
	}
	return -1;
}

/* A readable name for a msgpack type, for messages. */
static const char *
payload_type_name(const msgpack_object *o)
{
	switch (o->type) {
	case MSGPACK_OBJECT_NIL: return "nil";
	case MSGPACK_OBJECT_BOOLEAN: return "a boolean";
	case MSGPACK_OBJECT_POSITIVE_INTEGER:
	case MSGPACK_OBJECT_NEGATIVE_INTEGER: return "an integer";
	case MSGPACK_OBJECT_FLOAT32:
	case MSGPACK_OBJECT_FLOAT64: return "a float";
	case MSGPACK_OBJECT_STR: return "a string";
	case MSGPACK_OBJECT_BIN: return "binary";
	case MSGPACK_OBJECT_ARRAY: return "an array";
	case MSGPACK_OBJECT_MAP: return "a map";
	case MSGPACK_OBJECT_EXT: return "an extension";
	}
	return "unknown";
}

#define REFUSE(r, ...)                                                         \
	do {                                                                   \
		snprintf(err, errlen, __VA_ARGS__);                            \
		return (r);                                                    \
	} while (0)

/* A number field: int or float, finite. */
static enum refusal
payload_number(const msgpack_object *v, const char *name, double *out, char *err, size_t errlen)
{
	switch (v->type) {
	case MSGPACK_OBJECT_POSITIVE_INTEGER: *out = (double)v->via.u64; break;
	case MSGPACK_OBJECT_NEGATIVE_INTEGER: *out = (double)v->via.i64; break;
	case MSGPACK_OBJECT_FLOAT32:
	case MSGPACK_OBJECT_FLOAT64: *out = v->via.f64; break;
	default: REFUSE(REFUSE_TYPE, "%s: must be a number, not %s", name, payload_type_name(v));
	}
	if (!isfinite(*out))
		REFUSE(REFUSE_VALUE, "%s: must be a finite number", name);
	return REFUSE_NONE;
}

/*
 * A path field, checked by its text alone: relative (or absolute inside
 * builds_root), no "..", no NUL, not too long.  Stores the relative form.
 */
static enum refusal
payload_path(const msgpack_object *v, const char *name, const char *root, char **out, char *err,
    size_t errlen)
{
	const char *s;
	size_t n, rl = strlen(root);
	char *p, *save, *tok;
	bool first = true;

	if (v == NULL)
		REFUSE(REFUSE_MISSING, "%s: missing (a directory relative to builds_root)", name);
	if (v->type != MSGPACK_OBJECT_STR)
		REFUSE(REFUSE_TYPE, "%s: must be a string, not %s", name, payload_type_name(v));
	s = v->via.str.ptr;
	n = v->via.str.size;
	if (n == 0)
		REFUSE(REFUSE_PATH, "%s: empty path", name);
	if (n > PATH_FIELD_MAX)
		REFUSE(REFUSE_PATH, "%s: longer than %d bytes", name, PATH_FIELD_MAX);
	if (memchr(s, '\0', n) != NULL)
		REFUSE(REFUSE_PATH, "%s: contains a NUL byte", name);
	if (memchr(s, ':', n) != NULL)
		REFUSE(REFUSE_PATH, "%s: contains ':', which a container volume cannot carry", name);
	if (s[0] == '/') {
		while (rl > 1 && root[rl - 1] == '/')
			rl--;
		if (n <= rl + 1 || strncmp(s, root, rl) != 0 || s[rl] != '/')
			REFUSE(REFUSE_PATH, "%s: absolute path \"%.*s\" is outside builds_root", name,
			    (int)(n > 200 ? 200 : n), s);
		/* The rest is relative to builds_root: drop every slash that leads it. */
		while (n > rl && s[rl] == '/') {
			s++;
			n--;
		}
		s += rl;
		n -= rl;
		if (n == 0)
			REFUSE(REFUSE_PATH, "%s: names builds_root itself, not a directory below it", name);
	}
	p = xstrndup(s, n);
	save = xstrdup(p);
	for (tok = strtok(save, "/"); tok != NULL; tok = strtok(NULL, "/")) {
		if (first && strcmp(tok, ".") != 0) {
			first = false;
			if (strcmp(tok, JOBS_DIR) == 0) {
				free(save);
				free(p);
				REFUSE(REFUSE_PATH, "%s: %s/ below builds_root is the worker's own", name, JOBS_DIR);
			}
		}
		if (strcmp(tok, "..") == 0) {
			free(save);
			free(p);
			REFUSE(REFUSE_PATH, "%s: \"..\" is not allowed in a path", name);
		}
		if (strlen(tok) > NAME_MAX) {
			free(save);
			free(p);
			REFUSE(REFUSE_PATH, "%s: a path component is longer than %d bytes", name, NAME_MAX);
		}
	}
	free(save);
	*out = p;
	return REFUSE_NONE;
}

/* profile (a path) or profile_archive (a tar in the job): exactly one. */
static enum refusal
payload_profile(const msgpack_object *o, const struct config *c, struct job_spec *js, char *err,
    size_t errlen)
{
	const msgpack_object *pv = mp_get(o, "profile"), *av = mp_get(o, "profile_archive");

	if (pv != NULL && av != NULL)
		REFUSE(REFUSE_VALUE, "profile, profile_archive: give exactly one of them");
	if (pv == NULL && av == NULL)
		REFUSE(REFUSE_MISSING, "profile: missing (a directory relative to builds_root, or give profile_archive)");
	if (av == NULL)
		return payload_path(pv, "profile", c->builds_root, &js->profile, err, errlen);
	if (av->type != MSGPACK_OBJECT_BIN)
		REFUSE(REFUSE_TYPE, "profile_archive: must be binary (a tar archive), not %s", payload_type_name(av));
	if (av->via.bin.size == 0)
		REFUSE(REFUSE_ARCHIVE, "profile_archive: empty");
	js->profile_archive = xmalloc(av->via.bin.size);
	memcpy(js->profile_archive, av->via.bin.ptr, av->via.bin.size);
	js->profile_archive_len = av->via.bin.size;
	return REFUSE_NONE;
}

/* Whether s[0..n) is an HTTP header name (an RFC 9110 token). */
static bool
payload_token(const char *s, size_t n)
{
	if (n == 0)
		return false;
	for (size_t i = 0; i < n; i++)
		if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') || (s[i] >= '0' && s[i] <= '9') ||
		    strchr("!#$%&'*+-.^_`|~", s[i]) != NULL) || s[i] == '\0')
			return false;
	return true;
}

/*
 * Whether the authority auth[0..n) (of an http/https URL: https says
 * which) names a host upload_allow lets in.  With a list, the authority
 * must be plain: userinfo of RFC 3986 characters, a host of letters,
 * digits, dots and dashes or an [IPv6] literal, an optional port.
 * Anything else (percent-escapes, backslashes...) is refused rather than
 * guessed at, so libcurl cannot read another host out of it.
 */
static bool
payload_upload_host_ok(const struct config *c, const char *auth, size_t n, bool https, char *err, size_t errlen)
{
	const char *at = NULL, *host, *end = auth + n, *colon;
	char hbuf[256];
	size_t hlen;
	long port;

	if (c == NULL || c->upload_allow.n == 0)
		return true;
	for (const char *s = auth; s < end; s++)
		if (*s == '@')
			at = s;
	if (at != NULL) {
		for (const char *s = auth; s < at; s++)
			if (!isalnum((unsigned char)*s) && strchr("-._~!$&'()*+,;=:%", *s) == NULL) {
				snprintf(err, errlen, "upload.url: the userinfo holds a character upload_allow cannot check");
				return false;
			}
		host = at + 1;
	} else
		host = auth;
	if (*host == '[') {
		colon = memchr(host, ']', (size_t)(end - host));
		if (colon == NULL) {
			snprintf(err, errlen, "upload.url: an IPv6 host without its ']'");
			return false;
		}
		colon++;
	} else
		for (colon = host; colon < end && (isalnum((unsigned char)*colon) || *colon == '.' || *colon == '-'); colon++)
			;
	hlen = (size_t)(colon - host);
	port = https ? 443 : 80;
	if (colon < end) {
		char *pe;
		if (*colon != ':' || colon + 1 == end || (port = strtol(colon + 1, &pe, 10), pe != end) ||
		    !isdigit((unsigned char)colon[1]) || port < 1 || port > 65535) {
			snprintf(err, errlen, "upload.url: the host is not a plain host[:port] upload_allow can check");
			return false;
		}
	}
	if (hlen == 0 || hlen >= sizeof hbuf) {
		snprintf(err, errlen, "upload.url: no host upload_allow can check");
		return false;
	}
	memcpy(hbuf, host, hlen);
	hbuf[hlen] = '\0';
	for (size_t i = 0; i < c->upload_allow.n; i++) {
		const char *a = c->upload_allow.v[i], *ac;
		size_t alen;
		long aport = -1;

		/* "host:port" (the last colon outside brackets), "[v6]:port", else the host alone. */
		ac = strrchr(a, ':');
		if (ac != NULL && (a[0] != '[' || ac > strchr(a, ']'))) {
			aport = strtol(ac + 1, NULL, 10);
			alen = (size_t)(ac - a);
		} else
			alen = strlen(a);
		if (aport >= 0 && aport != port)
			continue;
		if (alen > 2 && a[0] == '*' && a[1] == '.') {
			/* "*.example.com": a subdomain, at any depth; not example.com itself */
			if (hlen > alen - 1 && strncasecmp(hbuf + hlen - (alen - 1), a + 1, alen - 1) == 0)
				return true;
		} else if (hlen == alen && strncasecmp(hbuf, a, alen) == 0)
			return true;
	}
	snprintf(err, errlen, "upload.url: host \"%.200s\" (port %ld) is not in the worker's upload_allow", hbuf, port);
	return false;
}

/*
 * upload: {url: "http(s)://host/prefix/{name}", headers: {str: str}}.
 * Header values may be credentials: messages name the header, never
 * quote its value.  The headers the worker sets itself are refused.
 */
static enum refusal
payload_upload(const msgpack_object *v, const struct config *c, struct job_spec *js, char *err, size_t errlen)
{
	static const char *own[] = { "content-length", "content-digest", "transfer-encoding", "host",
		"expect", "connection", "te", "upgrade", NULL };
	const msgpack_object *u, *h;
	const char *auth, *path, *hole;

	if (v->type != MSGPACK_OBJECT_MAP)
		REFUSE(REFUSE_TYPE, "upload: must be a map {url, headers}, not %s", payload_type_name(v));
	if ((u = mp_get(v, "url")) == NULL)
		REFUSE(REFUSE_MISSING, "upload.url: missing");
	if (u->type != MSGPACK_OBJECT_STR)
		REFUSE(REFUSE_TYPE, "upload.url: must be a string, not %s", payload_type_name(u));
	if (u->via.str.size > UPLOAD_URL_MAX)
		REFUSE(REFUSE_VALUE, "upload.url: longer than %d bytes", UPLOAD_URL_MAX);
	for (uint32_t i = 0; i < u->via.str.size; i++)
		if ((unsigned char)u->via.str.ptr[i] <= 0x20 || u->via.str.ptr[i] == 0x7f)
			REFUSE(REFUSE_VALUE, "upload.url: contains a space or a control character");
	if (!((u->via.str.size > 7 && strncasecmp(u->via.str.ptr, "http://", 7) == 0) ||
	    (u->via.str.size > 8 && strncasecmp(u->via.str.ptr, "https://", 8) == 0)))
		REFUSE(REFUSE_VALUE, "upload.url: must be an http:// or https:// URL");
	js->upload_url = xstrndup(u->via.str.ptr, u->via.str.size);
	/*
	 * The build names its files: a name must never reach the host part,
	 * or a file called "evil.example/x" would send the headers there.
	 */
	auth = strstr(js->upload_url, "://") + 3;
	path = auth + strcspn(auth, "/?#");
	if (path == auth)
		REFUSE(REFUSE_VALUE, "upload.url: no host");
	if ((hole = strstr(js->upload_url, "{name}")) != NULL && hole < path)
		REFUSE(REFUSE_VALUE, "upload.url: {name} may only stand in the path or the query, not the host");
	if (hole == NULL && *path != '/')
		REFUSE(REFUSE_VALUE, "upload.url: without {name}, the URL is a prefix and needs a path "
		    "(\"https://host/\" at least)");
	if (!payload_upload_host_ok(c, auth, (size_t)(path - auth), tolower((unsigned char)js->upload_url[4]) == 's',
	    err, errlen))
		return REFUSE_VALUE;
	if ((h = mp_get(v, "headers")) == NULL || h->type == MSGPACK_OBJECT_NIL)
		return REFUSE_NONE;
	if (h->type != MSGPACK_OBJECT_MAP)
		REFUSE(REFUSE_TYPE, "upload.headers: must be a map of strings, not %s", payload_type_name(h));
	if (h->via.map.size > UPLOAD_HEADERS_MAX)
		REFUSE(REFUSE_LIMIT, "upload.headers: more than %d headers", UPLOAD_HEADERS_MAX);
	for (uint32_t i = 0; i < h->via.map.size; i++) {
		const msgpack_object *k = &h->via.map.ptr[i].key, *val = &h->via.map.ptr[i].val;
		char name[64], *line;
		if (k->type != MSGPACK_OBJECT_STR || !payload_token(k->via.str.ptr, k->via.str.size) ||
		    k->via.str.size >= sizeof name)
			REFUSE(REFUSE_VALUE, "upload.headers: a name is not an HTTP header name (a token of 1 to 63 bytes)");
		memcpy(name, k->via.str.ptr, k->via.str.size);
		name[k->via.str.size] = '\0';
		for (const char **o = own; *o != NULL; o++)
			if (strcasecmp(name, *o) == 0)
				REFUSE(REFUSE_VALUE, "upload.headers: %s is set by the worker", name);
		if (val->type != MSGPACK_OBJECT_STR)
			REFUSE(REFUSE_TYPE, "upload.headers.%s: must be a string, not %s", name, payload_type_name(val));
		if (val->via.str.size > UPLOAD_HEADER_MAX)
			REFUSE(REFUSE_VALUE, "upload.headers.%s: longer than %d bytes", name, UPLOAD_HEADER_MAX);
		for (uint32_t b = 0; b < val->via.str.size; b++) {
			unsigned char ch = (unsigned char)val->via.str.ptr[b];
			if ((ch < 0x20 && ch != '\t') || ch == 0x7f)
				REFUSE(REFUSE_VALUE, "upload.headers.%s: the value contains a control character", name);
		}
		line = xasprintf("%s: %.*s", name, (int)val->via.str.size, val->via.str.ptr);
		strv_push(&js->upload_headers, line);
		free(line);
	}
	return REFUSE_NONE;
}

/* Decode the fields of a job map; see the contract in PROTOCOL.md. */
static enum refusal
payload_fields(const msgpack_object *o, const struct config *c, struct job_spec *js, char *err,
    size_t errlen)
{
	const msgpack_object *v;
	enum refusal r;
	double d;

	if (o->type != MSGPACK_OBJECT_MAP)
		REFUSE(REFUSE_NOT_MAP, "payload must be a msgpack map, not %s", payload_type_name(o));

	if ((v = mp_get(o, "id")) == NULL)
		REFUSE(REFUSE_MISSING, "id: missing");
	for (uint32_t i = 0, n = 0; i < o->via.map.size; i++) {
		const msgpack_object *k = &o->via.map.ptr[i].key;
		/* Readers disagree on which of two ids counts (the reaper takes the last). */
		if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == 2 && memcmp(k->via.str.ptr, "id", 2) == 0 &&
		    ++n > 1)
			REFUSE(REFUSE_VALUE, "id: given more than once");
	}
	if (v->type != MSGPACK_OBJECT_STR)
		REFUSE(REFUSE_TYPE, "id: must be a string, not %s", payload_type_name(v));
	if (!id_valid(v->via.str.ptr, v->via.str.size))
		REFUSE(REFUSE_ID, "id: must match [A-Za-z0-9][A-Za-z0-9_.-]{0,63}");
	memcpy(js->id, v->via.str.ptr, v->via.str.size);
	js->id[v->via.str.size] = '\0';

	if ((r = payload_profile(o, c, js, err, errlen)))
		return r;
	if ((v = mp_get(o, "upload")) != NULL && (r = payload_upload(v, c, js, err, errlen)))
		return r;
	/* Without output the worker makes one; only a job whose artifacts are uploaded may leave it out. */
	if ((v = mp_get(o, "output")) == NULL && js->upload_url == NULL)
		REFUSE(REFUSE_MISSING, "output: missing (a directory relative to builds_root; "
		    "only a job with upload may leave it out)");
	if (v != NULL && (r = payload_path(v, "output", c->builds_root, &js->output, err, errlen)))
		return r;

	if ((v = mp_get(o, "source_date_epoch")) != NULL) {
		if (v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
			REFUSE(REFUSE_VALUE, "source_date_epoch: must not be negative");
		if (v->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
			REFUSE(REFUSE_TYPE, "source_date_epoch: must be an integer, not %s", payload_type_name(v));
		if (v->via.u64 > (uint64_t)EPOCH_MAX)
			REFUSE(REFUSE_VALUE, "source_date_epoch: %llu is after the year 9999",
			    (unsigned long long)v->via.u64);
		js->source_date_epoch = (int64_t)v->via.u64;
		js->has_epoch = true;
	}
	if ((v = mp_get(o, "enqueued_at")) != NULL) {
		if ((r = payload_number(v, "enqueued_at", &d, err, errlen)))
			return r;
		if (d < 0 || d > (double)EPOCH_MAX)
			REFUSE(REFUSE_VALUE, "enqueued_at: %g is not a time between 1970 and 9999", d);
		js->enqueued_at = d;
		if (!js->has_epoch) {
			js->source_date_epoch = (int64_t)d;
			js->has_epoch = true;
		}
	}

	js->memory = c->memory;
	if ((v = mp_get(o, "memory")) != NULL) {
		char buf[32], e[ERR_MAX];
		if (v->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
			js->memory = v->via.u64;
		else if (v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
			REFUSE(REFUSE_VALUE, "memory: must not be negative");
		else if (v->type == MSGPACK_OBJECT_STR) {
			if (v->via.str.size >= sizeof buf)
				REFUSE(REFUSE_VALUE, "memory: \"%.*s...\" is not a size", 16, v->via.str.ptr);
			memcpy(buf, v->via.str.ptr, v->via.str.size);
			buf[v->via.str.size] = '\0';
			if (memchr(v->via.str.ptr, '\0', v->via.str.size) != NULL)
				REFUSE(REFUSE_VALUE, "memory: contains a NUL byte");
			if (parse_size(buf, &js->memory, e, sizeof e) != 0)
				REFUSE(REFUSE_VALUE, "memory: %s", e);
		} else
			REFUSE(REFUSE_TYPE, "memory: must be bytes (integer) or a size string like \"512m\", not %s",
			    payload_type_name(v));
		if (js->memory < MIN_MEMORY)
			REFUSE(REFUSE_VALUE, "memory: %llu bytes is below the minimum of 6m",
			    (unsigned long long)js->memory);
		if (js->memory > c->max_memory) {
			char b1[32], b2[32];
			REFUSE(REFUSE_LIMIT, "memory: %s is over this worker's max_memory of %s",
			    fmt_bytes(js->memory, b1, sizeof b1), fmt_bytes(c->max_memory, b2, sizeof b2));
		}
	}

	js->cpus = c->cpus;
	if ((v = mp_get(o, "cpus")) != NULL) {
		if ((r = payload_number(v, "cpus", &js->cpus, err, errlen)))
			return r;
		if (js->cpus < 0.01)
			REFUSE(REFUSE_VALUE, "cpus: must be at least 0.01");
		if (js->cpus > c->max_cpus)
			REFUSE(REFUSE_LIMIT, "cpus: %g is over this worker's max_cpus of %g", js->cpus, c->max_cpus);
	}

	js->timeout = c->timeout;
	if ((v = mp_get(o, "timeout")) != NULL) {
		if ((r = payload_number(v, "timeout", &js->timeout, err, errlen)))
			return r;
		if (js->timeout <= 0)
			REFUSE(REFUSE_VALUE, "timeout: must be above 0 seconds");
		if (js->timeout > c->max_timeout)
			REFUSE(REFUSE_LIMIT, "timeout: %g s is over this worker's max_timeout of %g s", js->timeout,
			    c->max_timeout);
	}
	js->warning = c->warning < js->timeout ? c->warning : js->timeout * 0.75;
	if ((v = mp_get(o, "warning")) != NULL) {
		if ((r = payload_number(v, "warning", &js->warning, err, errlen)))
			return r;
		if (js->warning < 0)
			REFUSE(REFUSE_VALUE, "warning: must not be negative");
		if (js->warning > js->timeout)
			REFUSE(REFUSE_VALUE, "warning: %g s is after the timeout of %g s", js->warning, js->timeout);
	}

	if ((v = mp_get(o, "retries")) != NULL) {
		if (v->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
			REFUSE(v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER ? REFUSE_VALUE : REFUSE_TYPE,
			    "retries: must be an integer from 0 to 10");
		if (v->via.u64 > 10)
			REFUSE(REFUSE_LIMIT, "retries: %llu is over the maximum of 10", (unsigned long long)v->via.u64);
		js->retries = (long)v->via.u64;
	}

	if ((v = mp_get(o, "image")) != NULL) {
		if (v->type != MSGPACK_OBJECT_STR)
			REFUSE(REFUSE_TYPE, "image: must be a string, not %s", payload_type_name(v));
		js->image = xstrndup(v->via.str.ptr, v->via.str.size);
		if (strlen(js->image) != v->via.str.size ||
		    (strcmp(js->image, c->image) != 0 && !strv_has(&c->images, js->image)))
			REFUSE(REFUSE_IMAGE, "image: \"%.100s\" is not one this worker allows", js->image);
	} else
		js->image = xstrdup(c->image);

	if ((v = mp_get(o, "meta")) != NULL) {
		msgpack_sbuffer sb;
		msgpack_packer pk;
		if (v->type != MSGPACK_OBJECT_MAP)
			REFUSE(REFUSE_TYPE, "meta: must be a map, not %s", payload_type_name(v));
		msgpack_sbuffer_init(&sb);
		msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
		msgpack_pack_object(&pk, *v);
		js->meta = sb.data;	/* the job owns the buffer now */
		js->meta_len = sb.size;
	}
	return REFUSE_NONE;
}

/* Decode, validate and copy a payload into js. */
enum refusal
payload_decode(const char *buf, size_t len, const struct config *c, struct job_spec *js, char *err,
    size_t errlen)
{
	msgpack_unpacked u;
	enum refusal r;
	char e[ERR_MAX];
	int rc;

	memset(js, 0, sizeof *js);
	if (len > c->max_payload)
		REFUSE(REFUSE_TOO_LARGE, "payload of %zu bytes is over max_payload (%llu)", len,
		    (unsigned long long)c->max_payload);
	msgpack_unpacked_init(&u);
	if ((rc = mp_unpack(buf, len, MP_MAX_DEPTH, &u, e, sizeof e)) != 0) {
		msgpack_unpacked_destroy(&u);
		REFUSE(rc == -2 ? REFUSE_TOO_DEEP : REFUSE_MALFORMED, "payload: %s", e);
	}
	r = payload_fields(&u.data, c, js, err, errlen);
	msgpack_unpacked_destroy(&u);
	/* Messages quote payload bytes: keep control characters out of logs. */
	if (r != REFUSE_NONE) {
		str_printable(e, sizeof e, err);
		snprintf(err, errlen, "%s", e);
	}
	return r;
}

/* Free what payload_decode() copied. */
void
payload_free(struct job_spec *js)
{
	free(js->profile);
	free(js->output);
	free(js->image);
	free(js->meta);
	free(js->profile_archive);
	free(js->upload_url);
	strv_free(&js->upload_headers);
	js->profile = js->output = js->image = js->meta = js->profile_archive = js->upload_url = NULL;
}

/* Encode js as the contract's job map. */
void
payload_encode(const struct job_spec *js, msgpack_sbuffer *sb)
{
	msgpack_packer pk;
	int n = 1 + (js->profile || !js->profile_archive) + (js->output || !js->upload_url) +
	    (js->profile_archive ? 1 : 0) + (js->upload_url ? 1 : 0) + !(js->omit & JOB_OMIT_MEMORY) + !(js->omit & JOB_OMIT_CPUS) +
	    !(js->omit & JOB_OMIT_TIMEOUT) + !(js->omit & JOB_OMIT_WARNING) + (js->has_epoch ? 1 : 0) +
	    (js->image ? 1 : 0) + (js->meta ? 1 : 0) + (js->retries ? 1 : 0) + (js->enqueued_at > 0 ? 1 : 0);

	msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
	msgpack_pack_map(&pk, (size_t)n);
	mp_kv_str(&pk, "id", js->id);
	if (js->profile_archive) {
		mp_str(&pk, "profile_archive");
		msgpack_pack_bin(&pk, js->profile_archive_len);
		msgpack_pack_bin_body(&pk, js->profile_archive, js->profile_archive_len);
	}
	if (js->profile || !js->profile_archive)
		mp_kv_str(&pk, "profile", js->profile ? js->profile : "");
	if (js->output || !js->upload_url)
		mp_kv_str(&pk, "output", js->output ? js->output : "");
	if (js->upload_url) {
		mp_str(&pk, "upload");
		msgpack_pack_map(&pk, 2);
		mp_kv_str(&pk, "url", js->upload_url);
		mp_str(&pk, "headers");
		msgpack_pack_map(&pk, js->upload_headers.n);
		for (size_t i = 0; i < js->upload_headers.n; i++) {
			const char *l = js->upload_headers.v[i], *colon = strchr(l, ':');
			mp_strn(&pk, l, (size_t)(colon - l));
			mp_str(&pk, colon + 2);
		}
	}
	if (!(js->omit & JOB_OMIT_MEMORY))
		mp_kv_uint(&pk, "memory", js->memory);
	if (!(js->omit & JOB_OMIT_CPUS))
		mp_kv_double(&pk, "cpus", js->cpus);
	if (!(js->omit & JOB_OMIT_TIMEOUT))
		mp_kv_double(&pk, "timeout", js->timeout);
	if (!(js->omit & JOB_OMIT_WARNING))
		mp_kv_double(&pk, "warning", js->warning);
	if (js->has_epoch)
		mp_kv_int(&pk, "source_date_epoch", js->source_date_epoch);
	if (js->enqueued_at > 0)
		mp_kv_double(&pk, "enqueued_at", js->enqueued_at);
	if (js->image)
		mp_kv_str(&pk, "image", js->image);
	if (js->retries)
		mp_kv_int(&pk, "retries", js->retries);
	if (js->meta) {
		mp_str(&pk, "meta");
		msgpack_sbuffer_write(sb, js->meta, js->meta_len);
	}
}
