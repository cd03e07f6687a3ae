/*
 * uploadurl.c: where an artifact is PUT and what may be shown of it.
 * Pure functions (no I/O), unit tested: the target URL ({name} replaced
 * or appended, percent-encoded), the display form without userinfo,
 * query and fragment (they may be credentials: a presigned URL's
 * signature), and the base64 sha-256 for Content-Digest.
 */
#include <stdlib.h>
#include <string.h>

#include "worker.h"

/* Push name, percent-encoding all but unreserved characters and '/'. */
static void
upload_encode(struct strv *out, const char *name)
{
	static const char hex[] = "0123456789ABCDEF";
	size_t n = strlen(name), k = 0;
	char *buf = xmalloc(n * 3 + 1);

	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)name[i];
		if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || strchr("-._~/", c))
			buf[k++] = (char)c;
		else {
			buf[k++] = '%';
			buf[k++] = hex[c >> 4];
			buf[k++] = hex[c & 15];
		}
	}
	buf[k] = '\0';
	strv_push(out, buf);
	free(buf);
}

/* Every {name} in url replaced by the encoded name; none: appended. */
char *
upload_target(const char *url, const char *name)
{
	struct strv enc = { 0 };
	const char *p = url, *hit;
	char *out = xstrdup(""), *t;

	upload_encode(&enc, name);
	if (strstr(url, "{name}") == NULL) {
		free(out);
		out = xasprintf("%s%s", url, enc.v[0]);
		strv_free(&enc);
		return out;
	}
	while ((hit = strstr(p, "{name}")) != NULL) {
		t = xasprintf("%s%.*s%s", out, (int)(hit - p), p, enc.v[0]);
		free(out);
		out = t;
		p = hit + 6;
	}
	t = xasprintf("%s%s", out, p);
	free(out);
	strv_free(&enc);
	return t;
}

/* scheme://host[:port]/path: userinfo, query and fragment left out. */
char *
upload_display(const char *url)
{
	const char *auth = strstr(url, "://"), *end, *at, *path;
	size_t plen;

	if (auth == NULL)
		return xstrdup("");
	auth += 3;
	end = auth + strcspn(auth, "/?#");
	at = NULL;
	for (const char *c = auth; c < end; c++)
		if (*c == '@')
			at = c;
	if (at != NULL)
		auth = at + 1;
	path = end;
	plen = strcspn(path, "?#");
	return xasprintf("%.*s%.*s%.*s", (int)(strstr(url, "://") + 3 - url), url, (int)(end - auth), auth,
	    (int)plen, path);
}

/* base64 of the 32 bytes whose hex is given. */
int
upload_digest_b64(const char *hex, char *out, size_t outlen)
{
	static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	unsigned char bin[33] = { 0 };
	size_t k = 0;

	if (strlen(hex) != 64 || outlen < 45)
		return -1;
	for (size_t i = 0; i < 32; i++) {
		unsigned v = 0;
		for (int d = 0; d < 2; d++) {
			char c = hex[i * 2 + (size_t)d];
			v <<= 4;
			if (c >= '0' && c <= '9')
				v |= (unsigned)(c - '0');
			else if (c >= 'a' && c <= 'f')
				v |= (unsigned)(c - 'a' + 10);
			else if (c >= 'A' && c <= 'F')
				v |= (unsigned)(c - 'A' + 10);
			else
				return -1;
		}
		bin[i] = (unsigned char)v;
	}
	for (size_t i = 0; i < 32; i += 3) {
		unsigned v = (unsigned)bin[i] << 16 | (i + 1 < 32 ? (unsigned)bin[i + 1] << 8 : 0) |
		    (i + 2 < 32 ? bin[i + 2] : 0);
		out[k++] = b64[(v >> 18) & 63];
		out[k++] = b64[(v >> 12) & 63];
		out[k++] = i + 1 < 32 ? b64[(v >> 6) & 63] : '=';
		out[k++] = i + 2 < 32 ? b64[v & 63] : '=';
	}
	out[k] = '\0';
	return 0;
}
