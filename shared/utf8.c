/*
 * utf8.c: text a build printed, made fit for a msgpack str.
 *
 * The contract promises that every str the worker writes is valid UTF-8,
 * but a build may print any bytes.  Invalid input is replaced the way the
 * WHATWG Encoding standard and Unicode (chapter 3, "U+FFFD substitution
 * of maximal subparts") do it: each maximal subpart of an ill-formed
 * sequence, that is the longest prefix of a well-formed sequence that is
 * there, or else a single byte, becomes one U+FFFD.  Overlong forms,
 * surrogates (U+D800-U+DFFF) and code points above U+10FFFF are never
 * well-formed, so their lead byte alone (or the lead and the bytes that
 * still fit) is one such subpart.
 */
#include <stdlib.h>
#include <string.h>

#include "debate.h"

static const char utf8_fffd[3] = { (char)0xef, (char)0xbf, (char)0xbd };

/*
 * The unit at s[0..n) (n > 0): a well-formed character (*valid true) or a
 * maximal ill-formed subpart (*valid false); returns its length, 1 to 4.
 * *cut is set when the unit is a well-formed prefix that only the end of
 * the input cut short, so more input could have completed it.
 */
static size_t
utf8_unit(const unsigned char *s, size_t n, bool *valid, bool *cut)
{
	unsigned char lo = 0x80, hi = 0xbf;
	size_t need, k;

	*cut = false;
	*valid = true;
	if (s[0] < 0x80)
		return 1;
	if (s[0] >= 0xc2 && s[0] <= 0xdf)
		need = 2;
	else if (s[0] >= 0xe0 && s[0] <= 0xef) {
		need = 3;
		lo = s[0] == 0xe0 ? 0xa0 : 0x80;	/* no overlongs */
		hi = s[0] == 0xed ? 0x9f : 0xbf;	/* no surrogates */
	} else if (s[0] >= 0xf0 && s[0] <= 0xf4) {
		need = 4;
		lo = s[0] == 0xf0 ? 0x90 : 0x80;	/* no overlongs */
		hi = s[0] == 0xf4 ? 0x8f : 0xbf;	/* nothing above U+10FFFF */
	} else {
		*valid = false;	/* a continuation byte, C0, C1 or F5-FF */
		return 1;
	}
	for (k = 1; k < need; k++) {
		if (k >= n) {
			*valid = false;
			*cut = true;
			return k;
		}
		if (s[k] < (k == 1 ? lo : 0x80) || s[k] > (k == 1 ? hi : 0xbf)) {
			*valid = false;
			return k;
		}
	}
	return need;
}

/* The length of the character or ill-formed subpart at s[0..n), n > 0. */
size_t
utf8_next(const char *s, size_t n, bool *valid)
{
	bool cut;

	return utf8_unit((const unsigned char *)s, n, valid, &cut);
}

/* Whether s[0..n) is valid UTF-8 already. */
bool
utf8_valid(const char *s, size_t n)
{
	const unsigned char *p = (const unsigned char *)s;
	size_t i = 0, k;
	bool valid, cut;

	while (i < n) {
		if (p[i] < 0x80) {
			i++;
			continue;
		}
		k = utf8_unit(p + i, n - i, &valid, &cut);
		if (!valid)
			return false;
		i += k;
	}
	return true;
}

/*
 * Copy src[0..n) into dst as valid UTF-8, each maximal ill-formed subpart
 * replaced by U+FFFD.  Only whole characters are written, while they fit
 * in dstlen - 1 bytes; dst is NUL-terminated (dstlen > 0).  Returns the
 * bytes written; dstlen of 3 * n + 1 always holds everything.
 */
size_t
utf8_sanitize(char *dst, size_t dstlen, const char *src, size_t n)
{
	const unsigned char *p = (const unsigned char *)src;
	size_t i = 0, o = 0, k;
	bool valid, cut;

	while (i < n) {
		k = utf8_unit(p + i, n - i, &valid, &cut);
		if (o + (valid ? k : 3) >= dstlen)
			break;
		memcpy(dst + o, valid ? src + i : utf8_fffd, valid ? k : 3);
		o += valid ? k : 3;
		i += k;
	}
	dst[o] = '\0';
	return o;
}

/*
 * How many bytes of s[0..n) to take so that their sanitized form is at
 * most max bytes and ends on a character boundary: a character (or an
 * ill-formed subpart) is never split.  With more set, s is followed by
 * input not read yet, so a well-formed prefix cut short by the end of s
 * is left for later rather than replaced.
 */
size_t
utf8_cut(const char *s, size_t n, size_t max, bool more)
{
	const unsigned char *p = (const unsigned char *)s;
	size_t i = 0, o = 0, k;
	bool valid, cut;

	while (i < n) {
		k = utf8_unit(p + i, n - i, &valid, &cut);
		if ((cut && more) || o + (valid ? k : 3) > max)
			break;
		o += valid ? k : 3;
		i += k;
	}
	return i;
}

/* Pack s[0..n) as a str of valid UTF-8 (sanitized when it is not). */
void
utf8_pack(msgpack_packer *pk, const char *s, size_t n)
{
	char stack[1024], *buf;

	if (utf8_valid(s, n)) {
		mp_strn(pk, s, n);
		return;
	}
	buf = 3 * n + 1 <= sizeof stack ? stack : xmalloc(3 * n + 1);
	mp_strn(pk, buf, utf8_sanitize(buf, 3 * n + 1, s, n));
	if (buf != stack)
		free(buf);
}
