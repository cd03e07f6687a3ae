/*
 * config.c: worker.ini, parsed by libinih into a fresh struct config.
 *
 * Every key is in one table below with its type and bounds, so a bad line
 * gets "worker.ini:LINE: message" naming the key and what it expects.  The
 * caller swaps the new struct in only when config_load() and
 * config_check() both succeed.
 */
#include <errno.h>
#include <ini.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "debate.h"

enum conf_type { T_STR, T_INT, T_SIZE, T_SECS, T_BOOL, T_LIST, T_LEVEL, T_SUDO };

struct conf_key {
	const char *section;
	const char *name;
	enum conf_type type;
	size_t off;
	long long min, max;	/* T_INT */
};

#define K(s, n, t, f) { s, n, t, offsetof(struct config, f), 0, 0 }
#define KI(s, n, f, lo, hi) { s, n, T_INT, offsetof(struct config, f), lo, hi }

static const struct conf_key conf_keys[] = {
	K("redis", "url", T_STR, redis_url),
	K("redis", "user", T_STR, redis_user),
	K("redis", "password", T_STR, redis_password),
	K("redis", "password_env", T_STR, redis_password_env),
	K("redis", "connect_timeout", T_SECS, redis_connect_timeout),

	K("queue", "namespace", T_STR, namespace),
	KI("queue", "result_ttl", result_ttl, 1, 365LL * 86400),
	KI("queue", "log_maxlen", log_maxlen, 0, 100000000),
	KI("queue", "dead_maxlen", dead_maxlen, 0, 100000000),
	K("queue", "max_payload", T_SIZE, max_payload),
	KI("queue", "max_attempts", max_attempts, 1, 1000),
	K("queue", "retry_backoff", T_SECS, retry_backoff),
	K("queue", "retry_backoff_max", T_SECS, retry_backoff_max),

	KI("worker", "concurrency", concurrency, 1, 1024),
	K("worker", "builds_root", T_STR, builds_root),
	K("worker", "heartbeat_interval", T_SECS, heartbeat_interval),
	K("worker", "heartbeat_ttl", T_SECS, heartbeat_ttl),
	K("worker", "reaper_interval", T_SECS, reaper_interval),
	K("worker", "drain_timeout", T_SECS, drain_timeout),
	K("worker", "stats_interval", T_SECS, stats_interval),
	K("worker", "keep_outputs", T_BOOL, keep_outputs),
	K("worker", "min_free", T_SIZE, min_free),
	KI("worker", "profile_max_entries", profile_max_entries, 1, 100000000),
	K("worker", "profile_max_bytes", T_SIZE, profile_max_bytes),
	KI("worker", "profile_max_depth", profile_max_depth, 1, 1024),
	K("worker", "upload_timeout", T_SECS, upload_timeout),
	K("worker", "upload_retry_backoff", T_SECS, upload_retry_backoff),
	K("worker", "upload_allow", T_LIST, upload_allow),
	K("worker", "log_level", T_LEVEL, log_level),
	K("worker", "metrics_listen", T_STR, metrics_listen),
	KI("worker", "log_batch_lines", log_batch_lines, 1, 100000),
	K("worker", "log_batch_interval", T_SECS, log_batch_interval),
	KI("worker", "log_max_lines", log_max_lines, 0, 1000000000),
	KI("worker", "log_tail_lines", log_tail_lines, 0, 10000),
	K("worker", "outbox_max", T_SIZE, outbox_max),

	K("sandbox", "runtime", T_STR, runtime),
	K("sandbox", "sudo", T_SUDO, sudo),
	K("sandbox", "runtime_args", T_LIST, runtime_args),
	K("sandbox", "image", T_STR, image),
	K("sandbox", "images", T_LIST, images),
	K("sandbox", "containerfile", T_STR, containerfile),
	K("sandbox", "memory", T_SIZE, memory),
	K("sandbox", "max_memory", T_SIZE, max_memory),
	K("sandbox", "cpus", T_SECS, cpus),
	K("sandbox", "max_cpus", T_SECS, max_cpus),
	K("sandbox", "timeout", T_SECS, timeout),
	K("sandbox", "max_timeout", T_SECS, max_timeout),
	K("sandbox", "warning", T_SECS, warning),
	KI("sandbox", "pids_limit", pids_limit, 0, 4194304),
	K("sandbox", "stop_grace", T_SECS, stop_grace),
	K("sandbox", "collect_max_bytes", T_SIZE, collect_max_bytes),
	KI("sandbox", "collect_max_files", collect_max_files, 1, 100000000),
	KI("sandbox", "collect_max_depth", collect_max_depth, 1, 256),
	K("sandbox", "collect_timeout", T_SECS, collect_timeout),
	K("sandbox", "network", T_STR, network),
	K("sandbox", "privileged", T_BOOL, privileged),
	K("sandbox", "read_only", T_BOOL, read_only),
	K("sandbox", "no_new_privileges", T_BOOL, no_new_privileges),
	K("sandbox", "cap_add", T_LIST, cap_add),
	K("sandbox", "env_allow", T_LIST, env_allow),
	K("sandbox", "mounts", T_LIST, mounts),
	K("sandbox", "command", T_LIST, command),
};

/* The built-in phases: mkarchiso's stage lines. */
static const struct {
	const char *name, *pattern;
} conf_default_phases[] = {
	{ "validate", "Validating options" },
	{ "packages", "Installing packages" },
	{ "customize", "Customizing airootfs" },
	{ "bootloader", "Setting up " },
	{ "squashfs", "Creating SquashFS image" },
	{ "iso", "Creating ISO image" },
	{ "done", "INFO: Done! |" },	/* the last line: every stage ends "INFO: Done!" */
};

/* Fill c with the defaults every key falls back to. */
void
config_defaults(struct config *c)
{
	memset(c, 0, sizeof *c);
	c->redis_url = xstrdup("redis://127.0.0.1:6379/0");
	c->redis_password_env = xstrdup("DEBATE_REDIS_PASSWORD");
	c->redis_connect_timeout = 5;
	c->namespace = xstrdup("debate");
	c->result_ttl = 86400;
	c->log_maxlen = 10000;
	c->dead_maxlen = 10000;
	c->max_payload = 1 << 20;
	c->max_attempts = 3;
	c->retry_backoff = 5;
	c->retry_backoff_max = 300;
	c->concurrency = 1;
	c->builds_root = xstrdup("/var/lib/debate/builds");
	c->heartbeat_interval = 5;
	c->heartbeat_ttl = 15;
	c->reaper_interval = 5;
	c->drain_timeout = 60;
	c->stats_interval = 5;
	c->profile_max_entries = 100000;
	c->profile_max_bytes = 4ULL << 30;
	c->profile_max_depth = 64;
	c->upload_timeout = 3600;
	c->upload_retry_backoff = 1;
	c->log_level = LOG_INFO;
	c->log_batch_lines = 256;
	c->log_batch_interval = 0.2;
	c->log_max_lines = 1000000;
	c->log_tail_lines = 50;
	c->outbox_max = 64 << 20;
	c->runtime = xstrdup("auto");
	c->sudo = SUDO_AUTO;
	c->image = xstrdup("localhost/debate-archiso:latest");
	c->memory = 8ULL << 30;
	c->max_memory = 16ULL << 30;
	c->cpus = 4;
	c->max_cpus = 16;
	c->timeout = 1200;
	c->max_timeout = 4 * 3600;
	c->warning = 900;
	c->pids_limit = 4096;
	c->stop_grace = 10;
	c->collect_max_bytes = 64ULL << 30;
	c->collect_max_files = 10000;
	c->collect_max_depth = 32;
	c->collect_timeout = 120;
	c->network = xstrdup("none");
	c->read_only = true;
	c->no_new_privileges = true;
	strv_split(&c->cap_add, "CHOWN DAC_OVERRIDE FOWNER FSETID SETUID SETGID SYS_CHROOT", " ");
	strv_split(&c->command, "mkarchiso -v -w /tmp/archiso-work -o /build/output /build/profile", " ");
	c->nphases = sizeof conf_default_phases / sizeof conf_default_phases[0];
	c->phases = xcalloc(c->nphases, sizeof *c->phases);
	for (size_t i = 0; i < c->nphases; i++) {
		c->phases[i].name = xstrdup(conf_default_phases[i].name);
		c->phases[i].pattern = xstrdup(conf_default_phases[i].pattern);
	}
}

struct conf_parse {
	struct config *c;
	FILE *f;
	int line;		/* lines read so far: the one being parsed */
	int err_line;		/* where err was found */
	bool warning_set;
	char err[ERR_MAX];
	bool phases_seen;	/* a [phases] section replaces the defaults */
	struct strv seen;	/* list keys given once already (continuations append) */
};

/* Drop every phase rule. */
static void
config_phases_clear(struct config *c)
{
	for (size_t i = 0; i < c->nphases; i++) {
		free(c->phases[i].name);
		free(c->phases[i].pattern);
	}
	free(c->phases);
	c->phases = NULL;
	c->nphases = 0;
}

/* Whether s is an upload_allow entry: host, host:port, [v6], [v6]:port, *.domain. */
static bool
config_host_ok(const char *s)
{
	const char *h = strncmp(s, "*.", 2) == 0 ? s + 2 : s, *end;
	size_t n;

	if (*h == '[') {
		if ((end = strchr(h, ']')) == NULL || end == h + 1 || h != s ||
		    strspn(h + 1, "0123456789abcdefABCDEF:.") != (size_t)(end - h - 1))
			return false;
		end++;
	} else {
		n = strspn(h, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-");
		if (n == 0)
			return false;
		end = h + n;
	}
	if (*end == '\0')
		return true;
	if (*end != ':' || end[1] == '\0' || strspn(end + 1, "0123456789") != strlen(end + 1) ||
	    strlen(end + 1) > 5 || atoi(end + 1) < 1 || atoi(end + 1) > 65535)
		return false;
	return true;
}

/* Store one value according to its key's type. */
static int
config_set(struct conf_parse *cp, const struct conf_key *k, const char *value)
{
	char *field = (char *)cp->c + k->off;
	char e[ERR_MAX];
	long long ll;
	bool b;

	switch (k->type) {
	case T_STR:
		free(*(char **)field);
		*(char **)field = *value ? xstrdup(value) : NULL;
		return 0;
	case T_INT:
		if (parse_int(value, k->min, k->max, &ll, e, sizeof e) != 0)
			break;
		*(long *)field = (long)ll;
		return 0;
	case T_SIZE:
		if (parse_size(value, (uint64_t *)field, e, sizeof e) != 0)
			break;
		return 0;
	case T_SECS:
		if (parse_seconds(value, (double *)field, e, sizeof e) != 0)
			break;
		return 0;
	case T_BOOL:
		if (parse_bool(value, &b) != 0) {
			snprintf(e, sizeof e, "\"%s\" is not yes or no", value);
			break;
		}
		*(bool *)field = b;
		return 0;
	case T_LEVEL:
		if (log_level_parse(value, (enum log_level *)field) != 0) {
			snprintf(e, sizeof e, "\"%s\" is not error, warning, notice, info or debug", value);
			break;
		}
		return 0;
	case T_SUDO:
		if (strcmp(value, "auto") == 0)
			*(enum sudo_mode *)field = SUDO_AUTO;
		else if (parse_bool(value, &b) == 0)
			*(enum sudo_mode *)field = b ? SUDO_YES : SUDO_NO;
		else {
			snprintf(e, sizeof e, "\"%s\" is not auto, yes or no", value);
			break;
		}
		return 0;
	case T_LIST: {
		/* A list key's first line replaces the default; continuation lines append. */
		char tag[64];
		struct strv add = { 0 };
		struct strv *sv = (struct strv *)field;
		snprintf(tag, sizeof tag, "%s.%s", k->section, k->name);
		if (!strv_has(&cp->seen, tag)) {
			strv_free(sv);
			strv_push(&cp->seen, tag);
		}
		strv_split(&add, value, " \t");
		for (size_t i = 0; i < add.n; i++) {
			if (sv == &cp->c->upload_allow && !config_host_ok(add.v[i])) {
				snprintf(e, sizeof e, "\"%s\" is not a host, host:port, [IPv6]:port or *.domain",
				    add.v[i]);
				strv_free(&add);
				goto bad;
			}
			strv_push(sv, add.v[i]);
		}
		strv_free(&add);
		return 0;
	}
	}
bad:
	snprintf(cp->err, sizeof cp->err, "%s: %s", k->name, e);
	return -1;
}

/* libinih's callback: one name = value in a section. */
static int
config_handler(void *user, const char *section, const char *name, const char *value)
{
	struct conf_parse *cp = user;
	struct config *c = cp->c;

	if (cp->err[0] != '\0')
		return 1;	/* report the first error only */
	if (strcmp(section, "phases") == 0) {
		if (!cp->phases_seen) {
			config_phases_clear(c);
			cp->phases_seen = true;
		}
		if (*value == '\0') {
			snprintf(cp->err, sizeof cp->err, "phase \"%s\" needs a pattern", name);
			cp->err_line = cp->line;
			return 0;
		}
		c->phases = xrealloc(c->phases, (c->nphases + 1) * sizeof *c->phases);
		c->phases[c->nphases].name = xstrdup(name);
		c->phases[c->nphases].pattern = xstrdup(value);
		c->nphases++;
		return 1;
	}
	for (size_t i = 0; i < sizeof conf_keys / sizeof conf_keys[0]; i++) {
		const struct conf_key *k = &conf_keys[i];
		if (strcmp(k->section, section) == 0 && strcmp(k->name, name) == 0) {
			if (k->off == offsetof(struct config, warning))
				cp->warning_set = true;
			if (config_set(cp, k, value) == 0)
				return 1;
			cp->err_line = cp->line;
			return 0;
		}
	}
	cp->err_line = cp->line;
	if (strcmp(section, "redis") && strcmp(section, "queue") && strcmp(section, "worker") &&
	    strcmp(section, "sandbox"))
		snprintf(cp->err, sizeof cp->err, "unknown section [%s]", section);
	else
		snprintf(cp->err, sizeof cp->err, "unknown key \"%s\" in [%s]", name, section);
	return 0;
}

/*
 * libinih's line reader, counting lines so that errors name the right one.
 * libinih cuts lines at INI_MAX_LINE bytes and reads the rest as a new
 * line (which could smuggle a comment's tail in as a value): a line that
 * long is an error here.
 */
static char *
config_reader(char *str, int num, void *stream)
{
	struct conf_parse *cp = stream;
	size_t n;
	int ch;

	if (fgets(str, num, cp->f) == NULL)
		return NULL;
	cp->line++;
	n = strlen(str);
	if (n > 0 && str[n - 1] != '\n' && (ch = fgetc(cp->f)) != EOF) {
		ungetc(ch, cp->f);
		if (cp->err[0] == '\0') {
			snprintf(cp->err, sizeof cp->err, "line longer than %d bytes", num - 2);
			cp->err_line = cp->line;
		}
		return NULL;	/* stop: the rest of the file cannot be trusted */
	}
	return str;
}

/* Parse path on top of the defaults already in c. */
int
config_load(const char *path, struct config *c, char *err, size_t errlen)
{
	struct conf_parse cp = { .c = c };
	int line;

	free(c->path);
	c->path = xstrdup(path);
	if ((cp.f = fopen(path, "r")) == NULL) {
		snprintf(err, errlen, "%s: %s", path, strerror(errno));
		return -1;
	}
	line = ini_parse_stream(config_reader, &cp, config_handler, &cp);
	fclose(cp.f);
	strv_free(&cp.seen);
	if (line == 0 && cp.err[0] != '\0')
		line = cp.err_line;	/* the reader stopped on a long line */
	if (line == 0) {
		/* A shorter timeout without its own warning moves the warning in. */
		if (!cp.warning_set && c->warning > c->timeout)
			c->warning = c->timeout * 0.75;
		return 0;
	}
	if (line < 0)
		snprintf(err, errlen, "%s: cannot read it", path);
	else if (cp.err[0] != '\0' && (cp.err_line == line || cp.err_line == 0))
		snprintf(err, errlen, "%s:%d: %s", path, line, cp.err);
	else
		snprintf(err, errlen, "%s:%d: syntax error (expected [section] or name = value)", path, line);
	return -1;
}

/* Checks across keys, and of values no single key can judge. */
int
config_check(const struct config *c, char *err, size_t errlen)
{
	const char *p = c->path ? c->path : "worker.ini";
	struct redis_url u;
	char e[ERR_MAX];
	size_t nslen;

	if (c->namespace == NULL || !id_valid(c->namespace, strlen(c->namespace))) {
		snprintf(err, errlen, "%s: namespace must match [A-Za-z0-9][A-Za-z0-9_.-]{0,63}", p);
		return -1;
	}
	/*
	 * Container names are "<ns>-build-<id>".  With no "-build-" in ns and
	 * no "-build" at its end, the first "-build-" of a name is where ns
	 * ends, so one name is one (namespace, id): ns "a-build" with id "x"
	 * and ns "a" with id "build-x" would share one.
	 */
	nslen = strlen(c->namespace);
	if (strstr(c->namespace, "-build-") != NULL || (nslen >= 6 && strcmp(c->namespace + nslen - 6, "-build") == 0)) {
		snprintf(err, errlen, "%s: namespace \"%s\" must not contain \"-build-\" or end in \"-build\" "
		    "(container names are <namespace>-build-<id> and must tell namespaces apart)", p, c->namespace);
		return -1;
	}
	if (c->redis_url == NULL || url_parse(c->redis_url, &u, e, sizeof e) != 0) {
		snprintf(err, errlen, "%s: [redis] url: %s", p, c->redis_url ? e : "missing");
		return -1;
	}
	url_free(&u);
	if (c->builds_root == NULL || c->builds_root[0] != '/') {
		snprintf(err, errlen, "%s: builds_root must be an absolute path", p);
		return -1;
	}
	if (c->image == NULL) {
		snprintf(err, errlen, "%s: [sandbox] image is required", p);
		return -1;
	}
	if (c->command.n == 0) {
		snprintf(err, errlen, "%s: [sandbox] command is empty", p);
		return -1;
	}
	if (c->memory == 0 || c->memory > c->max_memory) {
		snprintf(err, errlen, "%s: memory must be above 0 and at most max_memory", p);
		return -1;
	}
	if (c->max_memory < (4 << 20)) {
		snprintf(err, errlen, "%s: max_memory must be at least 4m (runtimes refuse less)", p);
		return -1;
	}
	if (c->cpus <= 0 || c->cpus > c->max_cpus) {
		snprintf(err, errlen, "%s: cpus must be above 0 and at most max_cpus", p);
		return -1;
	}
	if (c->timeout <= 0 || c->timeout > c->max_timeout) {
		snprintf(err, errlen, "%s: timeout must be above 0 and at most max_timeout", p);
		return -1;
	}
	if (c->warning > c->timeout) {
		snprintf(err, errlen, "%s: warning (%g) must not be after timeout (%g)", p, c->warning, c->timeout);
		return -1;
	}
	if (c->heartbeat_interval <= 0 || c->heartbeat_ttl <= c->heartbeat_interval) {
		snprintf(err, errlen, "%s: heartbeat_ttl must be longer than heartbeat_interval (> 0)", p);
		return -1;
	}
	if (c->reaper_interval <= 0 || c->stats_interval <= 0 || c->log_batch_interval <= 0) {
		snprintf(err, errlen, "%s: reaper_interval, stats_interval and log_batch_interval must be above 0", p);
		return -1;
	}
	if (c->collect_max_bytes == 0 || c->collect_timeout <= 0) {
		snprintf(err, errlen, "%s: collect_max_bytes and collect_timeout must be above 0", p);
		return -1;
	}
	if (c->upload_timeout <= 0 || c->upload_retry_backoff <= 0) {
		snprintf(err, errlen, "%s: upload_timeout and upload_retry_backoff must be above 0", p);
		return -1;
	}
	/* 64m: a dead letter holding the whole payload stays far below Redis's 512 MB bulk limit. */
	if (c->max_payload < 64 || c->max_payload > (64 << 20)) {
		snprintf(err, errlen, "%s: max_payload must be between 64 bytes and 64m", p);
		return -1;
	}
	for (size_t i = 0; i < c->mounts.n; i++) {
		if (c->mounts.v[i][0] != '/' || strchr(c->mounts.v[i], ':') == NULL) {
			snprintf(err, errlen, "%s: mounts: \"%s\" is not /host/path:/container/path[:ro]", p,
			    c->mounts.v[i]);
			return -1;
		}
	}
	return 0;
}

/* Free everything c owns. */
void
config_free(struct config *c)
{
	for (size_t i = 0; i < sizeof conf_keys / sizeof conf_keys[0]; i++) {
		char *field = (char *)c + conf_keys[i].off;
		if (conf_keys[i].type == T_STR) {
			free(*(char **)field);
			*(char **)field = NULL;
		} else if (conf_keys[i].type == T_LIST)
			strv_free((struct strv *)field);
	}
	config_phases_clear(c);
	free(c->path);
	c->path = NULL;
}

/* The file to read: the one given, else ./worker.ini, else /etc/debate/worker.ini. */
const char *
config_find(const char *given)
{
	if (given != NULL)
		return given;
	if (access("worker.ini", F_OK) == 0)
		return "worker.ini";
	if (access("/etc/debate/worker.ini", F_OK) == 0)
		return "/etc/debate/worker.ini";
	return NULL;
}
