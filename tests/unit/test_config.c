/*
 * test_config.c: worker.ini, read by libinih into struct config: the
 * defaults, a complete file, one error per bad line as "PATH:LINE:
 * message" naming the key, list keys and continuation lines, [phases],
 * the cross-key checks of config_check() and where config_find() looks.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "debate.h"
#include "unit.h"

static char tmpdir[PATH_MAX];

static int
group_setup(void **state)
{
	char tmpl[] = "/tmp/debate-test-config.XXXXXX";

	(void)state;
	if (mkdtemp(tmpl) == NULL)
		return -1;
	snprintf(tmpdir, sizeof tmpdir, "%s", tmpl);
	return 0;
}

static int
group_teardown(void **state)
{
	(void)state;
	return unit_rmtree(tmpdir);
}

/* Write text to a new file in tmpdir; the caller frees the path. */
static char *
write_ini(const char *text)
{
	char *path = xasprintf("%s/worker.ini.XXXXXX", tmpdir);
	int fd = mkstemp(path);
	size_t n = strlen(text);

	assert_true(fd >= 0);
	assert_int_equal(write(fd, text, n), (ssize_t)n);
	close(fd);
	return path;
}

/* Load text on top of the defaults into c; returns config_load's result. */
static int
load(const char *text, struct config *c, char **path, char *err, size_t errlen)
{
	*path = write_ini(text);
	config_defaults(c);
	err[0] = '\0';
	return config_load(*path, c, err, errlen);
}

/* Load text, which must succeed and pass config_check. */
static void
load_ok(const char *text, struct config *c)
{
	char err[ERR_MAX], *path;

	int rc = load(text, c, &path, err, sizeof err);
	const char *what = rc != 0 ? "config_load" : "config_check";

	if (rc == 0)
		rc = config_check(c, err, sizeof err);
	free(path);
	if (rc != 0) {
		config_free(c);
		fail_msg("%s refused: %s\n--- file:\n%s", what, err, text);
	}
}

static void
test_defaults(void **state)
{
	struct config c;
	char err[ERR_MAX];

	(void)state;
	config_defaults(&c);
	assert_null(c.path);
	assert_string_equal(c.redis_url, "redis://127.0.0.1:6379/0");
	assert_null(c.redis_user);
	assert_null(c.redis_password);
	assert_string_equal(c.redis_password_env, "DEBATE_REDIS_PASSWORD");
	assert_true(c.redis_connect_timeout == 5);

	assert_string_equal(c.namespace, "debate");
	assert_int_equal(c.result_ttl, 86400);
	assert_int_equal(c.log_maxlen, 10000);
	assert_int_equal(c.dead_maxlen, 10000);
	assert_int_equal(c.max_payload, 1 << 20);
	assert_int_equal(c.max_attempts, 3);
	assert_true(c.retry_backoff == 5);
	assert_true(c.retry_backoff_max == 300);

	assert_int_equal(c.concurrency, 1);
	assert_string_equal(c.builds_root, "/var/lib/debate/builds");
	assert_true(c.heartbeat_interval == 5);
	assert_true(c.heartbeat_ttl == 15);
	assert_true(c.reaper_interval == 5);
	assert_true(c.drain_timeout == 60);
	assert_true(c.stats_interval == 5);
	assert_int_equal(c.log_level, LOG_INFO);
	assert_null(c.metrics_listen);
	assert_int_equal(c.log_batch_lines, 256);
	assert_true(c.log_batch_interval == 0.2);
	assert_int_equal(c.log_max_lines, 1000000);
	assert_int_equal(c.log_tail_lines, 50);
	assert_int_equal(c.outbox_max, 64 << 20);

	assert_string_equal(c.runtime, "auto");
	assert_int_equal(c.sudo, SUDO_AUTO);
	assert_int_equal(c.runtime_args.n, 0);
	assert_string_equal(c.image, "localhost/debate-archiso:latest");
	assert_int_equal(c.images.n, 0);
	assert_null(c.containerfile);
	assert_int_equal(c.memory, 8ULL << 30);
	assert_int_equal(c.max_memory, 16ULL << 30);
	assert_true(c.cpus == 4);
	assert_true(c.max_cpus == 16);
	assert_true(c.timeout == 1200);
	assert_true(c.max_timeout == 14400);
	assert_true(c.warning == 900);
	assert_int_equal(c.pids_limit, 4096);
	assert_true(c.stop_grace == 10);
	assert_int_equal(c.collect_max_bytes, 64ULL << 30);
	assert_int_equal(c.collect_max_files, 10000);
	assert_int_equal(c.collect_max_depth, 32);
	assert_true(c.collect_timeout == 120);
	assert_string_equal(c.network, "none");
	assert_false(c.privileged);
	assert_true(c.read_only);
	assert_true(c.no_new_privileges);
	assert_int_equal(c.cap_add.n, 7);
	assert_string_equal(c.cap_add.v[0], "CHOWN");
	assert_string_equal(c.cap_add.v[6], "SYS_CHROOT");
	assert_true(strv_has(&c.cap_add, "SETUID"));
	assert_false(strv_has(&c.cap_add, "SYS_ADMIN"));
	assert_int_equal(c.env_allow.n, 0);
	assert_int_equal(c.mounts.n, 0);
	assert_int_equal(c.command.n, 7);
	assert_string_equal(c.command.v[0], "mkarchiso");
	assert_string_equal(c.command.v[3], "/tmp/archiso-work");
	assert_string_equal(c.command.v[6], "/build/profile");

	assert_int_equal(c.nphases, 7);
	assert_string_equal(c.phases[0].name, "validate");
	assert_string_equal(c.phases[0].pattern, "Validating options");
	assert_string_equal(c.phases[3].pattern, "Setting up ");
	assert_string_equal(c.phases[6].name, "done");
	assert_string_equal(c.phases[6].pattern, "INFO: Done! |");

	/* The defaults pass the checks, which name worker.ini when there is no file. */
	assert_int_equal(config_check(&c, err, sizeof err), 0);
	c.heartbeat_ttl = 1;
	assert_int_equal(config_check(&c, err, sizeof err), -1);
	assert_int_equal(strncmp(err, "worker.ini: ", 12), 0);

	config_free(&c);
	assert_null(c.redis_url);
	assert_null(c.phases);
	assert_int_equal(c.nphases, 0);
	assert_int_equal(c.cap_add.n, 0);
	config_free(&c);	/* twice is harmless */
}

static const char full_ini[] =
	"; a complete worker.ini\n"
	"# with both comment styles\n"
	"\n"
	"[redis]\n"
	"url = redis://redis.internal:6380/2\n"
	"user = worker\n"
	"password = s3cret ; inline comment\n"
	"password_env = MY_REDIS_PW\n"
	"connect_timeout = 2.5\n"
	"\n"
	"[queue]\n"
	"namespace = builds.prod\n"
	"result_ttl = 3600\n"
	"log_maxlen = 500\n"
	"dead_maxlen = 1000\n"
	"max_payload = 256k\n"
	"max_attempts = 5\n"
	"retry_backoff = 1.5\n"
	"retry_backoff_max = 60\n"
	"\n"
	"[worker]\n"
	"concurrency = 8\n"
	"builds_root = /srv/builds\n"
	"heartbeat_interval = 2\n"
	"heartbeat_ttl = 6.5\n"
	"reaper_interval = 3\n"
	"drain_timeout = 120\n"
	"stats_interval = 1\n"
	"log_level = debug\n"
	"metrics_listen = 127.0.0.1:9101\n"
	"log_batch_lines = 64\n"
	"log_batch_interval = 0.5\n"
	"log_max_lines = 200000\n"
	"log_tail_lines = 20\n"
	"outbox_max = 16m\n"
	"\n"
	"[sandbox]\n"
	"runtime = podman\n"
	"sudo = no\n"
	"runtime_args = --root /var/lib/debate/storage --log-level=warn\n"
	"image = localhost/debate-archiso:2024\n"
	"images = docker.io/archlinux:latest localhost/other:1\n"
	"containerfile = /usr/share/debate/Containerfile\n"
	"memory = 4g\n"
	"max_memory = 32g\n"
	"cpus = 2.5\n"
	"max_cpus = 8\n"
	"timeout = 3600\n"
	"max_timeout = 7200\n"
	"warning = 3000\n"
	"pids_limit = 8192\n"
	"stop_grace = 30\n"
	"network = host\n"
	"privileged = yes\n"
	"read_only = off\n"
	"no_new_privileges = false\n"
	"cap_add = SYS_ADMIN MKNOD\n"
	"env_allow = http_proxy https_proxy\n"
	"mounts = /var/cache/pacman/pkg:/var/cache/pacman/pkg /etc/pacman.d/mirrorlist:/etc/pacman.d/mirrorlist:ro\n"
	"command = mkarchiso -v -o /build/output /build/profile\n"
	"\n"
	"[phases]\n"
	"fetch = :: Synchronizing package databases\n"
	"iso = Creating ISO image\n";

static void
test_full_file(void **state)
{
	struct config c;

	(void)state;
	load_ok(full_ini, &c);
	assert_non_null(c.path);
	assert_string_equal(c.redis_url, "redis://redis.internal:6380/2");
	assert_string_equal(c.redis_user, "worker");
	assert_string_equal(c.redis_password, "s3cret");
	assert_string_equal(c.redis_password_env, "MY_REDIS_PW");
	assert_true(c.redis_connect_timeout == 2.5);

	assert_string_equal(c.namespace, "builds.prod");
	assert_int_equal(c.result_ttl, 3600);
	assert_int_equal(c.log_maxlen, 500);
	assert_int_equal(c.dead_maxlen, 1000);
	assert_int_equal(c.max_payload, 256 << 10);
	assert_int_equal(c.max_attempts, 5);
	assert_true(c.retry_backoff == 1.5);
	assert_true(c.retry_backoff_max == 60);

	assert_int_equal(c.concurrency, 8);
	assert_string_equal(c.builds_root, "/srv/builds");
	assert_true(c.heartbeat_interval == 2);
	assert_true(c.heartbeat_ttl == 6.5);
	assert_true(c.reaper_interval == 3);
	assert_true(c.drain_timeout == 120);
	assert_true(c.stats_interval == 1);
	assert_int_equal(c.log_level, LOG_DEBUG);
	assert_string_equal(c.metrics_listen, "127.0.0.1:9101");
	assert_int_equal(c.log_batch_lines, 64);
	assert_true(c.log_batch_interval == 0.5);
	assert_int_equal(c.log_max_lines, 200000);
	assert_int_equal(c.log_tail_lines, 20);
	assert_int_equal(c.outbox_max, 16 << 20);

	assert_string_equal(c.runtime, "podman");
	assert_int_equal(c.sudo, SUDO_NO);
	assert_int_equal(c.runtime_args.n, 3);
	assert_string_equal(c.runtime_args.v[0], "--root");
	assert_string_equal(c.runtime_args.v[1], "/var/lib/debate/storage");
	assert_string_equal(c.runtime_args.v[2], "--log-level=warn");
	assert_string_equal(c.image, "localhost/debate-archiso:2024");
	assert_int_equal(c.images.n, 2);
	assert_string_equal(c.images.v[0], "docker.io/archlinux:latest");
	assert_string_equal(c.images.v[1], "localhost/other:1");
	assert_string_equal(c.containerfile, "/usr/share/debate/Containerfile");
	assert_int_equal(c.memory, 4ULL << 30);
	assert_int_equal(c.max_memory, 32ULL << 30);
	assert_true(c.cpus == 2.5);
	assert_true(c.max_cpus == 8);
	assert_true(c.timeout == 3600);
	assert_true(c.max_timeout == 7200);
	assert_true(c.warning == 3000);
	assert_int_equal(c.pids_limit, 8192);
	assert_true(c.stop_grace == 30);
	assert_string_equal(c.network, "host");
	assert_true(c.privileged);
	assert_false(c.read_only);
	assert_false(c.no_new_privileges);
	assert_int_equal(c.cap_add.n, 2);	/* replaced, not appended to the default */
	assert_string_equal(c.cap_add.v[0], "SYS_ADMIN");
	assert_string_equal(c.cap_add.v[1], "MKNOD");
	assert_int_equal(c.env_allow.n, 2);
	assert_string_equal(c.env_allow.v[1], "https_proxy");
	assert_int_equal(c.mounts.n, 2);
	assert_string_equal(c.mounts.v[1], "/etc/pacman.d/mirrorlist:/etc/pacman.d/mirrorlist:ro");
	assert_int_equal(c.command.n, 5);
	assert_string_equal(c.command.v[0], "mkarchiso");
	assert_string_equal(c.command.v[4], "/build/profile");

	assert_int_equal(c.nphases, 2);
	assert_string_equal(c.phases[0].name, "fetch");
	assert_string_equal(c.phases[0].pattern, ":: Synchronizing package databases");
	assert_string_equal(c.phases[1].name, "iso");
	assert_string_equal(c.phases[1].pattern, "Creating ISO image");
	config_free(&c);
}

/* Smaller forms of values: sudo, levels, bools, blank strings, inline comments. */
static void
test_value_forms(void **state)
{
	static const struct {
		const char *level;
		enum log_level want;
	} levels[] = {
		{ "error", LOG_ERR }, { "warning", LOG_WARN }, { "warn", LOG_WARN }, { "notice", LOG_NOTICE },
		{ "info", LOG_INFO }, { "debug", LOG_DEBUG }, { "DEBUG", LOG_DEBUG },
	};
	struct config c;
	char text[256];

	(void)state;
	for (size_t i = 0; i < sizeof levels / sizeof levels[0]; i++) {
		snprintf(text, sizeof text, "[worker]\nlog_level = %s\n", levels[i].level);
		load_ok(text, &c);
		assert_int_equal(c.log_level, levels[i].want);
		config_free(&c);
	}

	load_ok("[sandbox]\nsudo = auto\n", &c);
	assert_int_equal(c.sudo, SUDO_AUTO);
	config_free(&c);
	load_ok("[sandbox]\nsudo = yes\nprivileged = true\nread_only = 0\n", &c);
	assert_int_equal(c.sudo, SUDO_YES);
	assert_true(c.privileged);
	assert_false(c.read_only);
	config_free(&c);
	load_ok("[sandbox]\nsudo = off\n", &c);
	assert_int_equal(c.sudo, SUDO_NO);
	config_free(&c);

	/* A blank string value unsets it; a ';' needs a space before it to start a comment. */
	load_ok("[worker]\nmetrics_listen =\n[redis]\npassword =\n"
		"[sandbox]\nruntime = /opt/bin/podman;v2 ; the path\nnetwork = none   ; comment\n", &c);
	assert_null(c.metrics_listen);
	assert_null(c.redis_password);
	assert_string_equal(c.runtime, "/opt/bin/podman;v2");
	assert_string_equal(c.network, "none");
	config_free(&c);

	/* Later lines win; sizes take every unit. */
	load_ok("[worker]\nconcurrency = 2\nconcurrency = 3\n[queue]\nmax_payload = 64\n"
		"[sandbox]\nmax_memory = 1t\nmemory = 1048576k\n", &c);
	assert_int_equal(c.concurrency, 3);
	assert_int_equal(c.max_payload, 64);
	assert_int_equal(c.max_memory, 1ULL << 40);
	assert_int_equal(c.memory, 1ULL << 30);
	config_free(&c);
}

/* One bad file: the exact error, its line, and the key it names. */
struct bad_line {
	const char *text;
	int line;
	const char *msg;	/* after "PATH:LINE: " */
	const char *key;	/* the message names it */
};

static const struct bad_line bad_lines[] = {
	{ "[worker]\nconcurrency = 2\nbogus = 1\n", 3, "unknown key \"bogus\" in [worker]", "bogus" },
	{ "[worker]\nmemory = 1g\n", 2, "unknown key \"memory\" in [worker]", "memory" },
	{ "[bogus]\nx = 1\n", 2, "unknown section [bogus]", "bogus" },
	{ "[Worker]\nconcurrency = 1\n", 2, "unknown section [Worker]", "Worker" },
	{ "concurrency = 1\n", 1, "unknown section []", "[]" },
	{ "[worker]\nconcurrency = two\n", 2, "concurrency: \"two\" is not an integer", "concurrency" },
	{ "[worker]\nconcurrency = 2.5\n", 2, "concurrency: \"2.5\" is not an integer", "concurrency" },
	{ "[worker]\nconcurrency = 0\n", 2, "concurrency: 0 is out of range (1 to 1024)", "concurrency" },
	{ "[worker]\nconcurrency = 1025\n", 2, "concurrency: 1025 is out of range (1 to 1024)", "concurrency" },
	{ "[queue]\nmax_attempts = -1\n", 2, "max_attempts: -1 is out of range (1 to 1000)", "max_attempts" },
	{ "[sandbox]\npids_limit = 99999999999999999999\n", 2,
	    "pids_limit: \"99999999999999999999\" is not an integer", "pids_limit" },
	{ "[sandbox]\nmemory = 12q\n", 2,
	    "memory: \"12q\" is not a size (bytes, or a number with k, m, g or t)", "memory" },
	{ "[sandbox]\nmax_memory = 1.5g\n", 2,
	    "max_memory: \"1.5g\" is not a size (bytes, or a number with k, m, g or t)", "max_memory" },
	{ "[queue]\nmax_payload = 99999999999999t\n", 2, "max_payload: size \"99999999999999t\" is too large",
	    "max_payload" },
	{ "[sandbox]\nprivileged = maybe\n", 2, "privileged: \"maybe\" is not yes or no", "privileged" },
	{ "[sandbox]\nread_only =\n", 2, "read_only: \"\" is not yes or no", "read_only" },
	{ "[worker]\nlog_level = loud\n", 2,
	    "log_level: \"loud\" is not error, warning, notice, info or debug", "log_level" },
	{ "[sandbox]\nsudo = sometimes\n", 2, "sudo: \"sometimes\" is not auto, yes or no", "sudo" },
	{ "[worker]\nheartbeat_interval = soon\n", 2,
	    "heartbeat_interval: \"soon\" is not a number of seconds", "heartbeat_interval" },
	{ "[sandbox]\ntimeout = -1\n", 2, "timeout: \"-1\" is not a number of seconds", "timeout" },
	{ "[sandbox]\ncpus =\n", 2, "cpus: \"\" is not a number of seconds", "cpus" },
	{ "[phases]\nfetch =\n", 2, "phase \"fetch\" needs a pattern", "fetch" },
	{ "[worker]\n\nthis line has no equals sign\n", 3,
	    "syntax error (expected [section] or name = value)", "syntax" },
	{ "[worker\nconcurrency = 1\n", 1, "syntax error (expected [section] or name = value)", "syntax" },
	/* Comments and blank lines count; the first bad line is the one reported. */
	{ "; comment\n# comment\n\n[worker]\nconcurrency = x\nconcurrency = y\n", 5,
	    "concurrency: \"x\" is not an integer", "concurrency" },
	{ "[worker]\nlog_level = loud\nnonsense\n", 2,
	    "log_level: \"loud\" is not error, warning, notice, info or debug", "log_level" },
	{ "[worker]\nupload_allow = up.example.com\n  up/evil\n", 3,
	    "upload_allow: \"up/evil\" is not a host, host:port, [IPv6]:port or *.domain", "upload_allow" },
	{ "[worker]\nupload_allow = up.example.com:0\n", 2,
	    "upload_allow: \"up.example.com:0\" is not a host, host:port, [IPv6]:port or *.domain", "upload_allow" },
	/* A syntax error before a bad key is still the first error. */
	{ "[worker]\nnonsense\nbogus = 1\n", 2, "syntax error (expected [section] or name = value)", "syntax" },
};

static void
test_bad_lines(void **state)
{
	size_t bad = 0;

	(void)state;
	for (size_t i = 0; i < sizeof bad_lines / sizeof bad_lines[0]; i++) {
		struct config c;
		char err[ERR_MAX], want[ERR_MAX], *path;
		int rc = load(bad_lines[i].text, &c, &path, err, sizeof err);

		snprintf(want, sizeof want, "%s:%d: %s", path, bad_lines[i].line, bad_lines[i].msg);
		if (rc != -1 || strcmp(err, want) != 0) {
			print_error("case %zu: config_load returned %d with\n    \"%s\"\n  want\n    \"%s\"\n", i, rc,
			    err, want);
			bad++;
		} else if (strstr(err, bad_lines[i].key) == NULL) {
			print_error("case %zu: \"%s\" does not name \"%s\"\n", i, err, bad_lines[i].key);
			bad++;
		}
		config_free(&c);
		free(path);
	}
	assert_int_equal(bad, 0);
}

/*
 * Debian's libinih reads at most 200 bytes per line; the rest of a longer
 * line comes back as a line of its own.  Such a line must be reported at
 * its own line number, and what follows it must not be read as a
 * continuation of a list key.
 */
static void
test_long_line(void **state)
{
	struct config c;
	char text[1024], err[ERR_MAX], want[64], *path;
	char why[2][ERR_MAX + 64] = { "", "" };
	int rc;

	(void)state;
	/* A 219-byte comment whose 200th byte is a space: its tail must not become capabilities. */
	snprintf(text, sizeof text, "[sandbox]\ncap_add = CHOWN\n; Capabilities: %0183d SYS_ADMIN NET_ADMIN\n", 0);
	rc = load(text, &c, &path, err, sizeof err);
	if (rc == 0 && (c.cap_add.n != 1 || strv_has(&c.cap_add, "SYS_ADMIN")))
		snprintf(why[0], sizeof why[0], "the tail of a long comment line was added to cap_add "
		    "(%zu entries, SYS_ADMIN %s)", c.cap_add.n,
		    strv_has(&c.cap_add, "SYS_ADMIN") ? "granted" : "not granted");
	config_free(&c);
	free(path);

	/* ";000...0 SYS_ADMIN": the tail after 199 bytes is not indented; it is a bad line 3. */
	snprintf(text, sizeof text, "[sandbox]\ncap_add = CHOWN\n;%0250d SYS_ADMIN\nimage = x\n", 0);
	rc = load(text, &c, &path, err, sizeof err);
	snprintf(want, sizeof want, "%s:3:", path);
	if (rc == 0)
		snprintf(why[1], sizeof why[1], "a 261-byte comment line was accepted; cap_add has %zu entries",
		    c.cap_add.n);
	else if (strncmp(err, want, strlen(want)) != 0)
		snprintf(why[1], sizeof why[1], "a 261-byte line 3 was reported as \"%s\"", err);
	config_free(&c);
	free(path);

	if (why[0][0] != '\0' || why[1][0] != '\0')
		fail_msg("%s%s%s", why[0], why[0][0] && why[1][0] ? "; " : "", why[1]);
}

static void
test_list_keys(void **state)
{
	struct config c;

	(void)state;
	/* Split on spaces and tabs; indented lines continue the value and append. */
	load_ok("[sandbox]\n"
		"images = a:1  b:2\tc:3\n"
		"  d:4 e:5\n"
		"\tf:6\n"
		"cap_add = SYS_ADMIN\n"
		"    MKNOD\n"
		"runtime_args =\n"
		"   --storage-driver overlay\n"
		"mounts = /a:/a\n"
		"  /b:/b:ro\n"
		"command = sh\n"
		"  -c\n"
		"  true\n"
		"env_allow = http_proxy\n"
		"    no_proxy\n",
	    &c);
	assert_int_equal(c.images.n, 6);
	assert_string_equal(c.images.v[0], "a:1");
	assert_string_equal(c.images.v[1], "b:2");
	assert_string_equal(c.images.v[2], "c:3");
	assert_string_equal(c.images.v[3], "d:4");
	assert_string_equal(c.images.v[5], "f:6");
	assert_null(c.images.v[6]);
	assert_int_equal(c.cap_add.n, 2);	/* the default list is gone */
	assert_string_equal(c.cap_add.v[0], "SYS_ADMIN");
	assert_string_equal(c.cap_add.v[1], "MKNOD");
	assert_int_equal(c.runtime_args.n, 2);
	assert_string_equal(c.runtime_args.v[0], "--storage-driver");
	assert_string_equal(c.runtime_args.v[1], "overlay");
	assert_int_equal(c.mounts.n, 2);
	assert_string_equal(c.mounts.v[1], "/b:/b:ro");
	assert_int_equal(c.command.n, 3);
	assert_string_equal(c.command.v[0], "sh");
	assert_string_equal(c.command.v[2], "true");
	assert_int_equal(c.env_allow.n, 2);
	assert_string_equal(c.env_allow.v[1], "no_proxy");
	config_free(&c);

	/* An empty value empties the list: no capabilities at all. */
	load_ok("[sandbox]\ncap_add =\n", &c);
	assert_int_equal(c.cap_add.n, 0);
	config_free(&c);

	/* The same key again later appends, as a continuation would. */
	load_ok("[sandbox]\nimages = a\nimage = x\nimages = b\n", &c);
	assert_int_equal(c.images.n, 2);
	assert_string_equal(c.images.v[0], "a");
	assert_string_equal(c.images.v[1], "b");
	config_free(&c);

	/* A continuation after a blank line still continues (libinih). */
	load_ok("[sandbox]\ncap_add = CHOWN\n\n  FOWNER\n", &c);
	assert_int_equal(c.cap_add.n, 2);
	config_free(&c);

	/* Reloading starts each list afresh: nothing piles up across loads. */
	{
		char err[ERR_MAX], *path = write_ini("[sandbox]\nimages = a b\n");
		config_defaults(&c);
		assert_int_equal(config_load(path, &c, err, sizeof err), 0);
		assert_int_equal(config_load(path, &c, err, sizeof err), 0);
		assert_int_equal(c.images.n, 2);
		config_free(&c);
		free(path);
	}
}

static void
test_phases(void **state)
{
	struct config c;

	(void)state;
	load_ok("[phases]\n"
		"fetch = :: Synchronizing package databases ; pacman\n"
		"build = Building the thing\n",
	    &c);
	assert_int_equal(c.nphases, 2);
	assert_string_equal(c.phases[0].name, "fetch");
	assert_string_equal(c.phases[0].pattern, ":: Synchronizing package databases");
	assert_string_equal(c.phases[1].name, "build");
	assert_string_equal(c.phases[1].pattern, "Building the thing");
	config_free(&c);

	/* Split over two [phases] sections: still one list, defaults dropped once. */
	load_ok("[phases]\na = A\n[worker]\nconcurrency = 2\n[phases]\nb = B\n", &c);
	assert_int_equal(c.nphases, 2);
	assert_string_equal(c.phases[1].name, "b");
	config_free(&c);

	/* No [phases] section: the built-in ones stay. */
	load_ok("[worker]\nconcurrency = 2\n", &c);
	assert_int_equal(c.nphases, 7);
	config_free(&c);
}

/* Load text (which parses) and expect config_check to fail with frag. */
static void
check_bad(const char *text, const char *frag)
{
	struct config c;
	char err[ERR_MAX], *path, prefix[PATH_MAX + 4];

	int loaded = load(text, &c, &path, err, sizeof err);
	int checked = loaded == 0 ? config_check(&c, err, sizeof err) : -1;

	snprintf(prefix, sizeof prefix, "%s: ", path);
	config_free(&c);
	free(path);
	if (loaded != 0)
		fail_msg("config_load refused: %s", err);
	if (checked == 0)
		fail_msg("config_check accepted:\n%s", text);
	if (strncmp(err, prefix, strlen(prefix)) != 0)
		fail_msg("config_check error \"%s\" does not start with \"%s\"", err, prefix);
	if (strstr(err, frag) == NULL)
		fail_msg("config_check error \"%s\" does not contain \"%s\"", err, frag);
}

static void
test_config_check(void **state)
{
	struct config c;

	(void)state;
	check_bad("[sandbox]\nwarning = 1201\n", "warning (1201) must not be after timeout (1200)");
	check_bad("[sandbox]\ntimeout = 600\nwarning = 601\n", "warning");
	check_bad("[sandbox]\nmemory = 17g\n", "memory must be above 0 and at most max_memory");
	check_bad("[sandbox]\nmax_memory = 4g\n", "max_memory");
	check_bad("[sandbox]\nmemory = 0\n", "memory");
	check_bad("[sandbox]\nmax_memory = 1m\nmemory = 1m\n", "max_memory must be at least 4m");
	check_bad("[sandbox]\ncpus = 17\n", "cpus");
	check_bad("[sandbox]\ncpus = 0\n", "cpus");
	check_bad("[sandbox]\ntimeout = 0\n", "timeout");
	check_bad("[sandbox]\ntimeout = 20000\n", "timeout");
	check_bad("[sandbox]\nimage =\n", "image");
	check_bad("[sandbox]\ncommand =\n", "command");
	check_bad("[queue]\nnamespace = a b\n", "namespace");
	check_bad("[queue]\nnamespace = {x}\n", "namespace");
	check_bad("[queue]\nnamespace = ci-build\n", "must not contain \"-build-\" or end in \"-build\"");
	check_bad("[queue]\nnamespace = a-build-b\n", "must not contain \"-build-\"");
	check_bad("[queue]\nnamespace = -x\n", "namespace");
	check_bad("[queue]\nnamespace =\n", "namespace");
	check_bad("[queue]\nmax_payload = 63\n", "max_payload");
	check_bad("[queue]\nmax_payload = 65m\n", "max_payload");
	check_bad("[redis]\nurl = http://localhost:6379\n", "[redis] url: unsupported Redis URL");
	check_bad("[redis]\nurl = redis://h:0\n", "bad port");
	check_bad("[redis]\nurl =\n", "[redis] url: missing");
	check_bad("[worker]\nbuilds_root = srv/builds\n", "builds_root must be an absolute path");
	check_bad("[worker]\nbuilds_root =\n", "builds_root");
	check_bad("[sandbox]\nmounts = relative/path:/x\n", "mounts: \"relative/path:/x\"");
	check_bad("[sandbox]\nmounts = /ok:/ok /no-colon\n", "mounts: \"/no-colon\"");
	check_bad("[worker]\nheartbeat_interval = 5\nheartbeat_ttl = 5\n", "heartbeat_ttl");
	check_bad("[worker]\nheartbeat_interval = 10\nheartbeat_ttl = 5\n", "heartbeat_ttl");
	check_bad("[worker]\nheartbeat_interval = 0\nheartbeat_ttl = 5\n", "heartbeat");
	check_bad("[worker]\nreaper_interval = 0\n", "reaper_interval");
	check_bad("[worker]\nlog_batch_interval = 0\n", "log_batch_interval");
	check_bad("[sandbox]\ncollect_max_bytes = 0\n", "collect_max_bytes and collect_timeout must be above 0");
	check_bad("[sandbox]\ncollect_timeout = 0\n", "collect_timeout");
	load_ok("[sandbox]\ncollect_max_bytes = 2t\ncollect_max_files = 200000\ncollect_max_depth = 256\n"
		"collect_timeout = 1.5\n", &c);
	assert_int_equal(c.collect_max_bytes, 2ULL << 40);
	assert_int_equal(c.collect_max_files, 200000);
	assert_int_equal(c.collect_max_depth, 256);
	assert_true(c.collect_timeout == 1.5);
	config_free(&c);

	/* Right at the limits passes. */
	load_ok("[sandbox]\nwarning = 1200\nmemory = 16g\ncpus = 16\ntimeout = 14400\nwarning = 14400\n"
		"mounts = /a:/b:ro\n[worker]\nheartbeat_interval = 5\nheartbeat_ttl = 5.5\n"
		"[queue]\nmax_payload = 64m\nnamespace = A.b_c-9\n",
	    &c);
	config_free(&c);
}

static void
test_missing_file(void **state)
{
	struct config c;
	char err[ERR_MAX], *path = xasprintf("%s/does-not-exist.ini", tmpdir), want[PATH_MAX + 64];

	(void)state;
	config_defaults(&c);
	assert_int_equal(config_load(path, &c, err, sizeof err), -1);
	snprintf(want, sizeof want, "%s: No such file or directory", path);
	assert_string_equal(err, want);
	config_free(&c);
	free(path);
}

static void
test_config_find(void **state)
{
	char cwd[PATH_MAX], dir[PATH_MAX + 16];
	struct stat st;
	const char *found;
	int fd;

	(void)state;
	assert_non_null(getcwd(cwd, sizeof cwd));
	snprintf(dir, sizeof dir, "%s/find", tmpdir);
	assert_int_equal(mkdir(dir, 0755), 0);
	assert_int_equal(chdir(dir), 0);

	/* -c wins over everything, even a file that does not exist. */
	assert_string_equal(config_find("/nonexistent/given.ini"), "/nonexistent/given.ini");

	/* No ./worker.ini: /etc/debate/worker.ini when it is there, else nothing. */
	found = config_find(NULL);
	if (stat("/etc/debate/worker.ini", &st) == 0)
		assert_string_equal(found, "/etc/debate/worker.ini");
	else
		assert_null(found);

	/* ./worker.ini comes before /etc. */
	fd = open("worker.ini", O_WRONLY | O_CREAT, 0644);
	assert_true(fd >= 0);
	close(fd);
	assert_string_equal(config_find(NULL), "worker.ini");
	assert_string_equal(config_find("other.ini"), "other.ini");

	assert_int_equal(chdir(cwd), 0);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_defaults),
		cmocka_unit_test(test_full_file),
		cmocka_unit_test(test_value_forms),
		cmocka_unit_test(test_bad_lines),
		cmocka_unit_test(test_long_line),
		cmocka_unit_test(test_list_keys),
		cmocka_unit_test(test_phases),
		cmocka_unit_test(test_config_check),
		cmocka_unit_test(test_missing_file),
		cmocka_unit_test(test_config_find),
	};

	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
