/*
 * test_remote.c: issue 13's pure parts.  payload_decode() of profile_archive
 * and upload; the unpacker against hostile archives made here with
 * libarchive (nothing may appear outside the job's directory); the upload
 * URL, its display form and the Content-Digest value.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <archive.h>
#include <archive_entry.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "unit.h"
#include "worker.h"

/* What main.c defines, for the worker objects the upload helpers pull in. */
struct worker *wk;

/* ---- payload_decode ------------------------------------------------------- */

static struct config conf;

/* Pack a job map of n pairs given as (key, kind, value): kind 's' str, 'b' bin, 'u'/'m' upload map. */
static void
pack_job(msgpack_sbuffer *sb, int n, ...)
{
	msgpack_packer pk;
	va_list ap;

	msgpack_sbuffer_init(sb);
	msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
	msgpack_pack_map(&pk, (size_t)n);
	va_start(ap, n);
	for (int i = 0; i < n; i++) {
		const char *k = va_arg(ap, const char *);
		int kind = va_arg(ap, int);
		const char *v = va_arg(ap, const char *);
		mp_str(&pk, k);
		if (kind == 's')
			mp_str(&pk, v);
		else if (kind == 'b') {
			msgpack_pack_bin(&pk, strlen(v));
			msgpack_pack_bin_body(&pk, v, strlen(v));
		} else if (kind == 'u') {
			/* 'u': upload {url: v} */
			msgpack_pack_map(&pk, 1);
			mp_kv_str(&pk, "url", v);
		} else {
			/* 'm': upload {url: v, headers: {Authorization: "Bearer x"}} */
			const char *hname = va_arg(ap, const char *);
			msgpack_pack_map(&pk, 2);
			mp_kv_str(&pk, "url", v);
			mp_str(&pk, "headers");
			msgpack_pack_map(&pk, 1);
			mp_kv_str(&pk, hname, "Bearer s3cret\r\nX: y");
		}
	}
	va_end(ap);
}

static enum refusal
decode(msgpack_sbuffer *sb, struct job_spec *js, char *err)
{
	enum refusal r = payload_decode(sb->data, sb->size, &conf, js, err, ERR_MAX);
	msgpack_sbuffer_destroy(sb);
	return r;
}

/* upload_allow: only the hosts (and ports) listed; nothing libcurl could read another host from. */
static void
test_decode_upload_allow(void **state)
{
	static const struct { const char *url; const char *why; } cases[] = {
		{ "https://up.example.com/x/{name}", NULL },
		{ "https://UP.Example.com:443/x/", NULL },
		{ "http://up.example.com:8080/x/", NULL },	/* no port in the entry: any */
		{ "https://a.b.store.example/x/", NULL },
		{ "http://10.0.0.1:8080/up/{name}?sig=1", NULL },
		{ "http://[::1]:9000/x/", NULL },
		{ "https://user:pa%20ss@up.example.com/x/", NULL },
		{ "https://evil.example/x/", "host \"evil.example\" (port 443) is not in the worker's upload_allow" },
		{ "https://store.example/x/", "is not in the worker's upload_allow" },
		{ "http://10.0.0.1/up/", "host \"10.0.0.1\" (port 80) is not" },
		{ "http://[::1]/x/", "is not in the worker's upload_allow" },
		{ "https://up.example.com@evil.example/x/", "host \"evil.example\"" },
		{ "https://up.example.com.evil.example/x/", "is not in the worker's upload_allow" },
		{ "https://evil.example\\@up.example.com/x/", "userinfo" },
		{ "https://up.example.com%2e/x/", "not a plain host[:port]" },
		{ "https://up.example.com:99999/x/", "not a plain host[:port]" },
		{ "https://up.example.com:/x/", "not a plain host[:port]" },
	};
	msgpack_sbuffer sb;
	struct job_spec js;
	char err[ERR_MAX];

	(void)state;
	strv_push(&conf.upload_allow, "up.example.com");
	strv_push(&conf.upload_allow, "*.store.example");
	strv_push(&conf.upload_allow, "10.0.0.1:8080");
	strv_push(&conf.upload_allow, "[::1]:9000");
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		pack_job(&sb, 3, "id", 's', "j1", "profile", 's', "p", "upload", 'u', cases[i].url);
		err[0] = '\0';
		if (cases[i].why == NULL) {
			if (decode(&sb, &js, err) != REFUSE_NONE)
				fail_msg("%s: refused: %s", cases[i].url, err);
		} else {
			assert_int_equal(decode(&sb, &js, err), REFUSE_VALUE);
			if (strstr(err, cases[i].why) == NULL)
				fail_msg("%s: \"%s\" does not say \"%s\"", cases[i].url, err, cases[i].why);
		}
		payload_free(&js);
	}
	strv_free(&conf.upload_allow);
	/* Without a list, any host. */
	pack_job(&sb, 3, "id", 's', "j1", "profile", 's', "p", "upload", 'u', "https://evil.example/x/");
	assert_int_equal(decode(&sb, &js, err), REFUSE_NONE);
	payload_free(&js);
}

/* The new fields: one of profile/profile_archive; output optional only with upload. */
static void
test_decode_fields(void **state)
{
	msgpack_sbuffer sb;
	struct job_spec js;
	char err[ERR_MAX];

	(void)state;
	pack_job(&sb, 3, "id", 's', "j1", "profile_archive", 'b', "tar", "output", 's', "o");
	assert_int_equal(decode(&sb, &js, err), REFUSE_NONE);
	assert_null(js.profile);
	assert_int_equal(js.profile_archive_len, 3);
	payload_free(&js);

	pack_job(&sb, 4, "id", 's', "j1", "profile", 's', "p", "profile_archive", 'b', "t", "output", 's', "o");
	assert_int_equal(decode(&sb, &js, err), REFUSE_VALUE);
	assert_non_null(strstr(err, "exactly one"));
	payload_free(&js);

	pack_job(&sb, 3, "id", 's', "j1", "profile_archive", 's', "tar", "output", 's', "o");
	assert_int_equal(decode(&sb, &js, err), REFUSE_TYPE);
	payload_free(&js);

	pack_job(&sb, 2, "id", 's', "j1", "profile", 's', "p");
	assert_int_equal(decode(&sb, &js, err), REFUSE_MISSING);
	assert_non_null(strstr(err, "output: missing"));
	payload_free(&js);

	pack_job(&sb, 3, "id", 's', "j1", "profile", 's', "p", "output", 's', "jobs/x/1");
	assert_int_equal(decode(&sb, &js, err), REFUSE_PATH);
	assert_non_null(strstr(err, "worker's own"));
	payload_free(&js);

	pack_job(&sb, 2, "id", 's', "j1", "profile_archive", 'b', "");
	assert_int_equal(decode(&sb, &js, err), REFUSE_ARCHIVE);
	assert_string_equal(refusal_name(REFUSE_ARCHIVE), "bad_archive");
	payload_free(&js);
}

/* upload: the URL's scheme and bytes, header names and values; values never quoted. */
static void
test_decode_upload(void **state)
{
	msgpack_sbuffer sb, enc;
	struct job_spec js, back;
	char err[ERR_MAX];

	(void)state;
	pack_job(&sb, 3, "id", 's', "j1", "profile", 's', "p", "upload", 'm', "https://h/x/{name}", "X-Ok");
	/* the value has CR LF: refused, and the message does not quote it */
	assert_int_equal(decode(&sb, &js, err), REFUSE_VALUE);
	assert_non_null(strstr(err, "upload.headers.X-Ok"));
	assert_null(strstr(err, "s3cret"));
	payload_free(&js);

	pack_job(&sb, 3, "id", 's', "j1", "profile", 's', "p", "upload", 'm', "ftp://h/x", "X-Ok");
	assert_int_equal(decode(&sb, &js, err), REFUSE_VALUE);
	assert_non_null(strstr(err, "upload.url"));
	payload_free(&js);

	/* a file name must not choose the host */
	pack_job(&sb, 3, "id", 's', "j1", "profile", 's', "p", "upload", 'm', "http://{name}.h/x", "X-Ok");
	assert_int_equal(decode(&sb, &js, err), REFUSE_VALUE);
	assert_non_null(strstr(err, "not the host"));
	payload_free(&js);
	pack_job(&sb, 3, "id", 's', "j1", "profile", 's', "p", "upload", 'm', "http://h", "X-Ok");
	assert_int_equal(decode(&sb, &js, err), REFUSE_VALUE);
	assert_non_null(strstr(err, "needs a path"));
	payload_free(&js);

	pack_job(&sb, 3, "id", 's', "j1", "profile", 's', "p", "upload", 'm', "http://h/x", "Content-Length");
	assert_int_equal(decode(&sb, &js, err), REFUSE_VALUE);
	payload_free(&js);

	pack_job(&sb, 3, "id", 's', "j1", "profile", 's', "p", "upload", 'm', "http://h/x", "Bad Name");
	assert_int_equal(decode(&sb, &js, err), REFUSE_VALUE);
	payload_free(&js);

	/* A good one round-trips through payload_encode. */
	memset(&js, 0, sizeof js);
	snprintf(js.id, sizeof js.id, "j2");
	js.profile_archive = xstrdup("TAR");
	js.profile_archive_len = 3;
	js.upload_url = xstrdup("http://10.0.0.1:8080/up/{name}?sig=abc");
	strv_push(&js.upload_headers, "Authorization: Bearer tok");
	js.omit = JOB_OMIT_MEMORY | JOB_OMIT_CPUS | JOB_OMIT_TIMEOUT | JOB_OMIT_WARNING;
	msgpack_sbuffer_init(&enc);
	payload_encode(&js, &enc);
	assert_int_equal(payload_decode(enc.data, enc.size, &conf, &back, err, sizeof err), REFUSE_NONE);
	assert_null(back.output);
	assert_null(back.profile);
	assert_memory_equal(back.profile_archive, "TAR", 3);
	assert_string_equal(back.upload_url, js.upload_url);
	assert_int_equal(back.upload_headers.n, 1);
	assert_string_equal(back.upload_headers.v[0], "Authorization: Bearer tok");
	payload_free(&back);
	payload_free(&js);
	msgpack_sbuffer_destroy(&enc);
}

/* ---- the unpacker ------------------------------------------------------ */

struct mem {
	char *data;
	size_t len, cap;
};

static la_ssize_t
mem_write(struct archive *a, void *arg, const void *buf, size_t n)
{
	struct mem *m = arg;

	(void)a;
	if (m->len + n > m->cap) {
		m->cap = (m->len + n) * 2;
		m->data = xrealloc(m->data, m->cap);
	}
	memcpy(m->data + m->len, buf, n);
	m->len += n;
	return (la_ssize_t)n;
}

struct ent {
	const char *name;
	mode_t type;		/* AE_IFREG, AE_IFDIR, AE_IFLNK, AE_IFCHR, AE_IFIFO, or 0 for a hard link */
	const char *data;	/* file contents, symlink or hard link target */
	mode_t perm;
};

/* A pax tar of the entries, gzip'd (or zstd'd). */
static void
make_tar_with(struct mem *m, const struct ent *e, size_t n, bool zstd)
{
	struct archive *a = archive_write_new();

	memset(m, 0, sizeof *m);
	archive_write_set_format_pax_restricted(a);
	archive_write_set_bytes_in_last_block(a, 1);	/* no zero padding after a zstd frame */
	if (zstd)
		assert_int_equal(archive_write_add_filter_zstd(a), ARCHIVE_OK);
	else
		archive_write_add_filter_gzip(a);
	assert_int_equal(archive_write_open(a, m, NULL, mem_write, NULL), ARCHIVE_OK);
	for (size_t i = 0; i < n; i++) {
		struct archive_entry *ae = archive_entry_new();
		archive_entry_set_pathname(ae, e[i].name);
		archive_entry_set_perm(ae, e[i].perm ? e[i].perm : 0644);
		if (e[i].type == 0) {
			archive_entry_set_filetype(ae, AE_IFREG);
			archive_entry_set_hardlink(ae, e[i].data);
		} else {
			archive_entry_set_filetype(ae, e[i].type);
			if (e[i].type == AE_IFLNK)
				archive_entry_set_symlink(ae, e[i].data);
			if (e[i].type == AE_IFCHR)
				archive_entry_set_rdev(ae, makedev(1, 3));
			if (e[i].type == AE_IFREG && e[i].data)
				archive_entry_set_size(ae, (la_int64_t)strlen(e[i].data));
		}
		assert_int_equal(archive_write_header(a, ae), ARCHIVE_OK);
		if (e[i].type == AE_IFREG && e[i].data)
			archive_write_data(a, e[i].data, strlen(e[i].data));
		archive_entry_free(ae);
	}
	archive_write_close(a);
	archive_write_free(a);
}

static void
make_tar(struct mem *m, const struct ent *e, size_t n)
{
	make_tar_with(m, e, n, false);
}

static char top[256], root[300], outside[300];

static int
setup_dirs(void **state)
{
	(void)state;
	snprintf(top, sizeof top, "/tmp/test_remote.XXXXXX");
	assert_non_null(mkdtemp(top));
	snprintf(root, sizeof root, "%s/root", top);
	snprintf(outside, sizeof outside, "%s/outside", top);
	assert_int_equal(mkdir(root, 0755), 0);
	assert_int_equal(mkdir(outside, 0755), 0);
	return 0;
}

static int
teardown_dirs(void **state)
{
	(void)state;
	unit_rmtree(top);
	return 0;
}

/* Unpack m into root; the return code, err copied. */
static int
unpack_mem(const struct mem *m, const struct unpack_caps *caps, char *err)
{
	int fd = open(root, O_RDONLY | O_DIRECTORY);
	struct unpack *u = unpack_new(fd, m->data, m->len, caps);
	const char *e;
	int rc;

	while (!unpack_step(u))
		;
	rc = unpack_result(u, &e);
	snprintf(err, ERR_MAX, "%s", e);
	unpack_free(u);
	close(fd);
	return rc;
}

static const struct unpack_caps caps = { 1000, 1 << 20, 8 };

/* Whether outside (and the test's top) hold nothing new. */
static void
assert_outside_empty(void)
{
	struct stat st;
	char p[400];

	snprintf(p, sizeof p, "%s/pwned", outside);
	assert_int_not_equal(lstat(p, &st), 0);
	snprintf(p, sizeof p, "%s/pwned", top);
	assert_int_not_equal(lstat(p, &st), 0);
}

/* A good archive: files, dirs, an in-tree symlink and hard link; setuid dropped. */
static void
test_unpack_good(void **state)
{
	const struct ent e[] = {
		{ "./", AE_IFDIR, NULL, 0755 },
		{ "profiledef.sh", AE_IFREG, "iso_name=x\n", 0755 },
		{ "airootfs/root/run.sh", AE_IFREG, "echo hi\n", 04755 },
		{ "airootfs/etc/", AE_IFDIR, NULL, 0755 },
		{ "airootfs/etc/link", AE_IFLNK, "/etc/passwd", 0777 },
		{ "airootfs/etc/again", 0, "profiledef.sh", 0 },
	};
	struct mem m;
	char err[ERR_MAX], p[400];
	struct stat st;

	(void)state;
	make_tar(&m, e, sizeof e / sizeof e[0]);
	assert_int_equal(unpack_mem(&m, &caps, err), 0);
	snprintf(p, sizeof p, "%s/airootfs/root/run.sh", root);
	assert_int_equal(stat(p, &st), 0);
	assert_int_equal(st.st_mode & 07777, 0755);	/* setuid gone */
	snprintf(p, sizeof p, "%s/airootfs/etc/link", root);
	assert_int_equal(lstat(p, &st), 0);
	assert_true(S_ISLNK(st.st_mode));
	snprintf(p, sizeof p, "%s/airootfs/etc/again", root);
	assert_int_equal(lstat(p, &st), 0);
	assert_int_equal(st.st_nlink, 2);
	free(m.data);

	/* zstd-compressed, into a fresh root */
	unit_rmtree(root);
	assert_int_equal(mkdir(root, 0755), 0);
	make_tar_with(&m, e, 2, true);
	if (unpack_mem(&m, &caps, err) != 0)
		fail_msg("zstd: %s", err);
	snprintf(p, sizeof p, "%s/profiledef.sh", root);
	assert_int_equal(stat(p, &st), 0);
	assert_int_equal(st.st_size, 11);
	free(m.data);
}

/* Each hostile archive is refused naming its entry, and nothing lands outside root. */
static void
test_unpack_hostile(void **state)
{
	char abs[400], err[ERR_MAX];
	struct {
		struct ent e[3];
		size_t n;
		const char *want;
	} cases[] = {
		{ { { abs, AE_IFREG, "x", 0 } }, 1, "absolute path" },
		{ { { "a/../../pwned", AE_IFREG, "x", 0 } }, 1, "\"..\"" },
		{ { { "evil", AE_IFLNK, outside, 0 }, { "evil/pwned", AE_IFREG, "x", 0 } }, 2, "symlink" },
		{ { { "evil", AE_IFLNK, outside, 0 }, { "evil", AE_IFREG, "x", 0 } }, 2, "exists" },
		{ { { "pw", 0, "/etc/passwd", 0 } }, 1, "hard link" },
		{ { { "pw", 0, "../outside/x", 0 } }, 1, "hard link" },
		{ { { "l", AE_IFLNK, "/etc/passwd", 0 }, { "pw", 0, "l", 0 } }, 2, "not a regular file" },
		{ { { "null", AE_IFCHR, NULL, 0 } }, 1, "device node" },
		{ { { "fifo", AE_IFIFO, NULL, 0 } }, 1, "FIFO" },
		{ { { "a/b/c/d/e/f/g/h/i/j", AE_IFREG, "x", 0 } }, 1, "profile_max_depth" },
	};

	(void)state;
	snprintf(abs, sizeof abs, "%s/pwned", outside);
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		struct mem m;
		unit_rmtree(root);
		assert_int_equal(mkdir(root, 0755), 0);
		make_tar(&m, cases[i].e, cases[i].n);
		if (unpack_mem(&m, &caps, err) != -1 || strstr(err, cases[i].want) == NULL ||
		    strstr(err, "entry \"") == NULL)
			fail_msg("case %zu: want a refusal with \"%s\", got: %s", i, cases[i].want, err);
		assert_outside_empty();
		free(m.data);
	}
}

/* The caps: entries, and bytes really written (a bomb stops there). */
static void
test_unpack_caps(void **state)
{
	struct unpack_caps small = { 5, 4096, 8 };
	struct ent many[7], big = { "big", AE_IFREG, NULL, 0 };
	char *zeros = xcalloc(1, 100001), err[ERR_MAX];
	struct mem m;

	(void)state;
	for (int i = 0; i < 7; i++)
		many[i] = (struct ent){ "d/", AE_IFDIR, NULL, 0755 };
	make_tar(&m, many, 7);
	assert_int_equal(unpack_mem(&m, &small, err), -1);
	assert_non_null(strstr(err, "profile_max_entries"));
	free(m.data);

	memset(zeros, 'z', 100000);
	big.data = zeros;
	make_tar(&m, &big, 1);
	assert_int_equal(unpack_mem(&m, &small, err), -1);
	assert_non_null(strstr(err, "profile_max_bytes"));
	free(m.data);

	m.data = xstrdup("this is not a tar archive at all, not even compressed");
	m.len = strlen(m.data);
	assert_int_equal(unpack_mem(&m, &small, err), -1);
	assert_non_null(strstr(err, "not a readable tar"));
	free(m.data);
	free(zeros);
}

/* ---- upload helpers ---------------------------------------------------- */

static void
test_upload_helpers(void **state)
{
	char *s, b64[64];

	(void)state;
	s = upload_target("https://h/p/{name}?sig=1", "out/a b.iso");
	assert_string_equal(s, "https://h/p/out/a%20b.iso?sig=1");
	free(s);
	s = upload_target("https://h/p/", "x\xff.iso");
	assert_string_equal(s, "https://h/p/x%FF.iso");
	free(s);
	s = upload_display("https://user:pw@h:8443/p/x.iso?X-Amz-Signature=abc#f");
	assert_string_equal(s, "https://h:8443/p/x.iso");
	free(s);
	s = upload_display("http://h?q=1");
	assert_string_equal(s, "http://h");
	free(s);
	/* sha256("") */
	assert_int_equal(upload_digest_b64("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
	    b64, sizeof b64), 0);
	assert_string_equal(b64, "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=");
	assert_int_equal(upload_digest_b64("unreadable", b64, sizeof b64), -1);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_decode_fields),
		cmocka_unit_test(test_decode_upload),
		cmocka_unit_test(test_decode_upload_allow),
		cmocka_unit_test_setup_teardown(test_unpack_good, setup_dirs, teardown_dirs),
		cmocka_unit_test_setup_teardown(test_unpack_hostile, setup_dirs, teardown_dirs),
		cmocka_unit_test_setup_teardown(test_unpack_caps, setup_dirs, teardown_dirs),
		cmocka_unit_test(test_upload_helpers),
	};
	int rc;

	config_defaults(&conf);
	free(conf.builds_root);
	conf.builds_root = xstrdup("/srv/builds");
	rc = cmocka_run_group_tests(tests, NULL, NULL);
	config_free(&conf);
	return rc;
}
