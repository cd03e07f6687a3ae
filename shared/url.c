/*
 * url.c: where Redis is.
 *
 *   redis://[[user]:password@]host[:port][/db]
 *   unix://[[user]:password@]/path/to/redis.sock[?db=N]
 *   sentinel://[[user]:password@]host:port[,host:port...]/master[/db]
 *
 * user and password may be percent-encoded.  The userinfo ends at the
 * LAST '@' (host, port, db and master name never hold one), so a password
 * may contain '@' and '/' as they are; on unix:// it ends at the last "@/"
 * (the socket path may hold an '@' of its own).  A password is better kept
 * in worker.ini or the environment than in a URL on a command line.
 *
 * No error message repeats the password: every message names only the part
 * after the userinfo, or shows the URL with the userinfo as "***".
 */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "debate.h"

/* Decode %XX escapes of s[0..n) into a new string; NULL if malformed. */
static char *
url_unescape(const char *s, size_t n)
{
	char *out = xmalloc(n + 1), *o = out;

	for (size_t i = 0; i < n; i++) {
		if (s[i] == '%') {
			if (i + 2 >= n || !isxdigit((unsigned char)s[i + 1]) ||
			    !isxdigit((unsigned char)s[i + 2])) {
				free(out);
				return NULL;
			}
			char hex[3] = { s[i + 1], s[i + 2], '\0' };
			*o++ = (char)strtol(hex, NULL, 16);
			i += 2;
		} else
			*o++ = s[i];
	}
	*o = '\0';
	return out;
}

/* Where the userinfo of rest (after "scheme://") ends: its last '@', or NULL. */
static const char *
url_userinfo_end(const char *rest, bool unix_path)
{
	const char *at = NULL;

	if (!unix_path)
		return strrchr(rest, '@');
	if (*rest == '/')
		return NULL;	/* the path starts at once: no userinfo */
	for (const char *q = rest; (q = strstr(q, "@/")) != NULL; q++)
		at = q;
	return at;
}

/* Split "[user]:password@" off the front of *p. */
static int
url_userinfo(const char **p, bool unix_path, struct redis_url *u, char *err, size_t errlen)
{
	const char *at = url_userinfo_end(*p, unix_path), *colon;

	if (at == NULL)
		return 0;
	colon = memchr(*p, ':', (size_t)(at - *p));
	if (colon == NULL) {
		/* "password@" alone, as redis-cli accepts. */
		u->password = url_unescape(*p, (size_t)(at - *p));
	} else {
		if (colon > *p)
			u->user = url_unescape(*p, (size_t)(colon - *p));
		u->password = url_unescape(colon + 1, (size_t)(at - colon - 1));
	}
	if ((colon != NULL && colon > *p && u->user == NULL) || u->password == NULL) {
		snprintf(err, errlen, "bad %%-escape in the URL's user or password");
		return -1;
	}
	*p = at + 1;
	return 0;
}

/*
 * s as error messages may show it: everything up to its last '@' after
 * the scheme (or from the start without one) becomes "***".
 */
char *
url_redact(const char *s)
{
	const char *rest, *at, *sep;

	if (s == NULL)
		return xstrdup("");
	sep = strstr(s, "://");
	rest = sep ? sep + 3 : s;
	if ((at = strrchr(rest, '@')) == NULL)
		return xstrdup(s);
	return xasprintf("%.*s***%s", (int)(rest - s), s, at);
}

/* Parse "host[:port]" or "[v6]:port" of length n. */
static int
url_hostport(const char *s, size_t n, int defport, char **host, int *port, char *err, size_t errlen)
{
	const char *colon;
	long long v;
	char *ps;

	if (n == 0) {
		snprintf(err, errlen, "the URL has no host");
		return -1;
	}
	if (s[0] == '[') {
		const char *close = memchr(s, ']', n);
		if (close == NULL) {
			snprintf(err, errlen, "unclosed [ in the URL's host");
			return -1;
		}
		*host = xstrndup(s + 1, (size_t)(close - s - 1));
		colon = (close + 1 < s + n && close[1] == ':') ? close + 1 : NULL;
	} else {
		colon = memchr(s, ':', n);
		*host = xstrndup(s, colon ? (size_t)(colon - s) : n);
	}
	*port = defport;
	if (colon == NULL)
		return 0;
	ps = xstrndup(colon + 1, (size_t)(s + n - colon - 1));
	if (parse_int(ps, 1, 65535, &v, err, errlen) != 0) {
		char e2[ERR_MAX];
		snprintf(e2, sizeof e2, "bad port in the URL: %s", err);
		snprintf(err, errlen, "%s", e2);
		free(ps);
		return -1;
	}
	free(ps);
	*port = (int)v;
	return 0;
}

/* Parse a database number. */
static int
url_db(const char *s, int *db, char *err, size_t errlen)
{
	long long v;

	if (*s == '\0')
		return 0;
	if (parse_int(s, 0, 100000, &v, err, errlen) != 0) {
		snprintf(err, errlen, "bad database number \"%s\" in the URL", s);
		return -1;
	}
	*db = (int)v;
	return 0;
}

/* Parse s into out. */
int
url_parse(const char *s, struct redis_url *out, char *err, size_t errlen)
{
	struct redis_url u = { 0 };
	const char *p, *slash;

	if (s == NULL || *s == '\0') {
		snprintf(err, errlen, "empty Redis URL");
		return -1;
	}
	if (strncmp(s, "redis://", 8) == 0) {
		u.kind = URL_TCP;
		p = s + 8;
	} else if (strncmp(s, "unix://", 7) == 0) {
		u.kind = URL_UNIX;
		p = s + 7;
	} else if (strncmp(s, "sentinel://", 11) == 0) {
		u.kind = URL_SENTINEL;
		p = s + 11;
	} else {
		char *shown = url_redact(s);
		snprintf(err, errlen, "unsupported Redis URL \"%s\" (use redis://, unix:// or sentinel://)",
		    shown);
		free(shown);
		return -1;
	}
	if (url_userinfo(&p, u.kind == URL_UNIX, &u, err, errlen) != 0)
		goto fail;

	switch (u.kind) {
	case URL_TCP:
		slash = strchr(p, '/');
		if (url_hostport(p, slash ? (size_t)(slash - p) : strlen(p), 6379, &u.host, &u.port, err, errlen))
			goto fail;
		if (slash != NULL && url_db(slash + 1, &u.db, err, errlen) != 0)
			goto fail;
		break;
	case URL_UNIX: {
		const char *q = strchr(p, '?');
		if (*p != '/') {
			snprintf(err, errlen, "unix:// URL needs an absolute socket path");
			goto fail;
		}
		u.path = xstrndup(p, q ? (size_t)(q - p) : strlen(p));
		if (q != NULL) {
			if (strncmp(q, "?db=", 4) != 0) {
				snprintf(err, errlen, "unknown option \"%s\" in unix:// URL (only ?db=N)", q);
				goto fail;
			}
			if (url_db(q + 4, &u.db, err, errlen) != 0)
				goto fail;
		}
		break;
	}
	case URL_SENTINEL: {
		char *hosts, *master;
		slash = strchr(p, '/');
		if (slash == NULL || slash[1] == '\0') {
			snprintf(err, errlen, "sentinel:// URL needs /master-name after the hosts");
			goto fail;
		}
		hosts = xstrndup(p, (size_t)(slash - p));
		strv_split(&u.sentinels, hosts, ",");
		free(hosts);
		if (u.sentinels.n == 0) {
			snprintf(err, errlen, "sentinel:// URL has no sentinel host");
			goto fail;
		}
		for (size_t i = 0; i < u.sentinels.n; i++) {
			char *h = NULL;
			int port;
			if (url_hostport(u.sentinels.v[i], strlen(u.sentinels.v[i]), 26379, &h, &port, err, errlen)) {
				free(h);
				goto fail;
			}
			free(h);
		}
		master = xstrdup(slash + 1);
		char *dbs = strchr(master, '/');
		if (dbs != NULL) {
			*dbs++ = '\0';
			if (url_db(dbs, &u.db, err, errlen) != 0) {
				free(master);
				goto fail;
			}
		}
		if (*master == '\0') {
			snprintf(err, errlen, "sentinel:// URL has an empty master name");
			free(master);
			goto fail;
		}
		u.master = master;
		break;
	}
	}
	*out = u;
	return 0;
fail:
	url_free(&u);
	return -1;
}

/* The i-th sentinel's host and port (26379 when the URL gives none). */
int
url_sentinel(const struct redis_url *u, size_t i, char *host, size_t hostlen, int *port)
{
	char *h = NULL, err[ERR_MAX];

	if (i >= u->sentinels.n ||
	    url_hostport(u->sentinels.v[i], strlen(u->sentinels.v[i]), 26379, &h, port, err, sizeof err) != 0) {
		free(h);
		return -1;
	}
	snprintf(host, hostlen, "%s", h);
	free(h);
	return 0;
}

/* Free what url_parse allocated. */
void
url_free(struct redis_url *u)
{
	free(u->host);
	free(u->path);
	free(u->user);
	free(u->password);
	free(u->master);
	strv_free(&u->sentinels);
	memset(u, 0, sizeof *u);
}

/* A printable form of u with the password masked. */
char *
url_display(const struct redis_url *u)
{
	const char *auth = u->password ? "***@" : "";

	switch (u->kind) {
	case URL_TCP:
		return xasprintf("redis://%s%s:%d/%d", auth, u->host, u->port, u->db);
	case URL_UNIX:
		return xasprintf("unix://%s%s?db=%d", auth, u->path, u->db);
	case URL_SENTINEL: {
		char *hosts = xstrdup(""), *t;
		for (size_t i = 0; i < u->sentinels.n; i++) {
			t = xasprintf("%s%s%s", hosts, i ? "," : "", u->sentinels.v[i]);
			free(hosts);
			hosts = t;
		}
		t = xasprintf("sentinel://%s%s/%s/%d", auth, hosts, u->master, u->db);
		free(hosts);
		return t;
	}
	}
	return xstrdup("?");
}
