/*
 * util.c: allocation that cannot fail quietly, string vectors, clocks,
 * and the number parsers every config line and job field goes through.
 */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "debate.h"

/* malloc or die: running out of memory is a broken invariant here. */
void *
xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);

	if (p == NULL)
		fatalx("out of memory (%zu bytes)", n);
	return p;
}

/* calloc or die. */
void *
xcalloc(size_t n, size_t size)
{
	void *p = calloc(n ? n : 1, size ? size : 1);

	if (p == NULL)
		fatalx("out of memory (%zu x %zu bytes)", n, size);
	return p;
}

/* realloc or die. */
void *
xrealloc(void *p, size_t n)
{
	p = realloc(p, n ? n : 1);
	if (p == NULL)
		fatalx("out of memory (%zu bytes)", n);
	return p;
}

/* strdup or die. */
char *
xstrdup(const char *s)
{
	return xstrndup(s, strlen(s));
}

/* strndup or die. */
char *
xstrndup(const char *s, size_t n)
{
	char *p = xmalloc(n + 1);

	memcpy(p, s, n);
	p[n] = '\0';
	return p;
}

/* asprintf or die. */
char *
xasprintf(const char *fmt, ...)
{
	va_list ap;
	char *s;

	va_start(ap, fmt);
	if (vasprintf(&s, fmt, ap) < 0)
		fatalx("out of memory (asprintf)");
	va_end(ap);
	return s;
}

/* Append a copy of s. */
void
strv_push(struct strv *sv, const char *s)
{
	sv->v = xrealloc(sv->v, (sv->n + 2) * sizeof *sv->v);
	sv->v[sv->n++] = xstrdup(s);
	sv->v[sv->n] = NULL;
}

/* Free every string and the vector. */
void
strv_free(struct strv *sv)
{
	for (size_t i = 0; i < sv->n; i++)
		free(sv->v[i]);
	free(sv->v);
	sv->v = NULL;
	sv->n = 0;
}

/* Replace sv with the non-empty fields of s split at any of seps. */
int
strv_split(struct strv *sv, const char *s, const char *seps)
{
	strv_free(sv);
	while (*s != '\0') {
		size_t n = strcspn(s, seps);
		if (n > 0) {
			char *f = xstrndup(s, n);
			strv_push(sv, f);
			free(f);
		}
		s += n;
		if (*s != '\0')
			s++;
	}
	return (int)sv->n;
}

/* Whether s is one of sv's strings. */
bool
strv_has(const struct strv *sv, const char *s)
{
	for (size_t i = 0; i < sv->n; i++)
		if (strcmp(sv->v[i], s) == 0)
			return true;
	return false;
}

/* Wall-clock time in seconds. */
double
now_real(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Monotonic time in seconds. */
double
now_mono(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Parse a byte count with an optional k/m/g/t suffix (powers of 1024). */
int
parse_size(const char *s, uint64_t *out, char *err, size_t errlen)
{
	unsigned long long v;
	uint64_t mult = 1;
	char *end;

	if (s == NULL || !isdigit((unsigned char)*s)) {
		snprintf(err, errlen, "\"%s\" is not a size (bytes, or a number with k, m, g or t)",
		    s ? s : "");
		return -1;
	}
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno != 0) {
		snprintf(err, errlen, "size \"%s\" is too large", s);
		return -1;
	}
	switch (tolower((unsigned char)*end)) {
	case '\0': break;
	case 'k': mult = 1ULL << 10; end++; break;
	case 'm': mult = 1ULL << 20; end++; break;
	case 'g': mult = 1ULL << 30; end++; break;
	case 't': mult = 1ULL << 40; end++; break;
	default: end = NULL; break;
	}
	if (end != NULL && (*end == 'b' || *end == 'B') && mult != 1)
		end++;
	if (end == NULL || *end != '\0') {
		snprintf(err, errlen, "\"%s\" is not a size (bytes, or a number with k, m, g or t)", s);
		return -1;
	}
	if (v > UINT64_MAX / mult) {
		snprintf(err, errlen, "size \"%s\" is too large", s);
		return -1;
	}
	*out = (uint64_t)v * mult;
	return 0;
}

/* Parse a finite, non-negative number of seconds. */
int
parse_seconds(const char *s, double *out, char *err, size_t errlen)
{
	char *end;
	double v;

	errno = 0;
	v = strtod(s, &end);
	if (*s == '\0' || *end != '\0' || errno != 0 || !isfinite(v) || v < 0 || v > 1e9) {
		snprintf(err, errlen, "\"%s\" is not a number of seconds", s);
		return -1;
	}
	*out = v;
	return 0;
}

/* Parse a decimal integer within [min, max]. */
int
parse_int(const char *s, long long min, long long max, long long *out, char *err, size_t errlen)
{
	char *end;
	long long v;

	errno = 0;
	v = strtoll(s, &end, 10);
	if (*s == '\0' || *end != '\0' || errno != 0) {
		snprintf(err, errlen, "\"%s\" is not an integer", s);
		return -1;
	}
	if (v < min || v > max) {
		snprintf(err, errlen, "%lld is out of range (%lld to %lld)", v, min, max);
		return -1;
	}
	*out = v;
	return 0;
}

/* Parse yes/no, true/false, on/off, 1/0. */
int
parse_bool(const char *s, bool *out)
{
	if (!strcasecmp(s, "yes") || !strcasecmp(s, "true") || !strcasecmp(s, "on") || !strcmp(s, "1"))
		*out = true;
	else if (!strcasecmp(s, "no") || !strcasecmp(s, "false") || !strcasecmp(s, "off") || !strcmp(s, "0"))
		*out = false;
	else
		return -1;
	return 0;
}

/* [A-Za-z0-9][A-Za-z0-9_.-]{0,63}: safe in a key, a label and a container name. */
bool
id_valid(const char *s, size_t len)
{
	if (len == 0 || len > ID_MAX || !isalnum((unsigned char)s[0]) || !isascii(s[0]))
		return false;
	for (size_t i = 1; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		if (!isascii(c) || !(isalnum(c) || c == '_' || c == '.' || c == '-'))
			return false;
	}
	return true;
}

/*
 * Copy msg into buf as printable UTF-8: control characters, line breaks
 * and broken or cut sequences become '?'.  Messages that quote payload
 * bytes go through it before they reach a log, a dead entry or an event.
 */
void
str_printable(char *buf, size_t len, const char *msg)
{
	const unsigned char *s = (const unsigned char *)msg;
	size_t o = 0, n, k;
	unsigned char lo, hi;

	while (*s != '\0' && o + 1 < len) {
		n = 0;
		lo = 0x80;
		hi = 0xbf;
		if (*s >= 0xc2 && *s <= 0xdf) {
			n = 1;
			lo = *s == 0xc2 ? 0xa0 : 0x80;	/* not U+0080-U+009F */
		} else if (*s >= 0xe0 && *s <= 0xef) {
			n = 2;
			lo = *s == 0xe0 ? 0xa0 : 0x80;
			hi = *s == 0xed ? 0x9f : 0xbf;	/* no surrogates */
		} else if (*s >= 0xf0 && *s <= 0xf4) {
			n = 3;
			lo = *s == 0xf0 ? 0x90 : 0x80;
			hi = *s == 0xf4 ? 0x8f : 0xbf;
		}
		for (k = 1; n > 0 && k <= n; k++)
			if (s[k] < (k == 1 ? lo : 0x80) || s[k] > (k == 1 ? hi : 0xbf))
				break;
		if (n == 2 && s[0] == 0xe2 && s[1] == 0x80 && (s[2] == 0xa8 || s[2] == 0xa9))
			k = 0;	/* U+2028, U+2029: line breaks to some readers */
		if (n > 0 && k > n && o + n + 1 < len) {
			memcpy(buf + o, s, n + 1);
			o += n + 1;
			s += n + 1;
			continue;
		}
		buf[o++] = *s >= 0x20 && *s != 0x7f && *s < 0x80 ? (char)*s : '?';
		s++;
	}
	buf[o] = '\0';
}

/* Format n bytes for a human. */
const char *
fmt_bytes(uint64_t n, char *buf, size_t len)
{
	static const char *units[] = { "B", "KiB", "MiB", "GiB", "TiB" };
	double v = (double)n;
	size_t u = 0;

	while (v >= 1024 && u < 4) {
		v /= 1024;
		u++;
	}
	if (u == 0)
		snprintf(buf, len, "%llu B", (unsigned long long)n);
	else
		snprintf(buf, len, "%.1f %s", v, units[u]);
	return buf;
}

/* n in decimal at p; see debate.h. */
char *
fmt_uint(char *p, uint64_t n)
{
	char tmp[20];
	int k = 0;

	do
		tmp[k++] = (char)('0' + n % 10);
	while ((n /= 10) != 0);
	while (k > 0)
		*p++ = tmp[--k];
	return p;
}
