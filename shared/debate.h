/*
 * debate.h: what the worker and the enqueue client share.
 *
 * Sections: logging, strings and time, UTF-8, configuration (worker.ini),
 * Redis URLs, key names, msgpack helpers, jobs, results.
 * The wire contract these functions implement is shared/PROTOCOL.md.
 */
#ifndef DEBATE_H
#define DEBATE_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include <msgpack.h>

#define DEBATE_VERSION "1.0.0"
#define PROTOCOL_VERSION 1

#define ID_MAX 64		/* longest job id */
#define ERR_MAX 256		/* room for an error message */

/* --- log.c ------------------------------------------------------------ */

enum log_level { LOG_ERR = 3, LOG_WARN = 4, LOG_NOTICE = 5, LOG_INFO = 6, LOG_DEBUG = 7 };

void log_init(const char *name, enum log_level level);
void log_set_level(enum log_level level);
enum log_level log_get_level(void);
int log_level_parse(const char *s, enum log_level *out);
void log_msg(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define log_err(...) log_msg(LOG_ERR, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_WARN, __VA_ARGS__)
#define log_notice(...) log_msg(LOG_NOTICE, __VA_ARGS__)
#define log_info(...) log_msg(LOG_INFO, __VA_ARGS__)
#define log_debug(...)                                                         \
	do {                                                                   \
		if (log_get_level() >= LOG_DEBUG)                              \
			log_msg(LOG_DEBUG, __VA_ARGS__);                       \
	} while (0)
/* Log and exit 1 (fatal appends strerror(errno), as in tmux and OpenSMTPD). */
void fatalx(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
void fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

/* --- util.c ----------------------------------------------------------- */

struct strv {
	char **v;
	size_t n;
};

void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);
char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void strv_push(struct strv *sv, const char *s);
void strv_free(struct strv *sv);
int strv_split(struct strv *sv, const char *s, const char *seps);
bool strv_has(const struct strv *sv, const char *s);

double now_real(void);		/* unix time, seconds */
double now_mono(void);		/* CLOCK_MONOTONIC, seconds */

/* "512m", "8g", "1024" (bytes); 0 on success, -1 with err filled. */
int parse_size(const char *s, uint64_t *out, char *err, size_t errlen);
/* A non-negative decimal or fractional number of seconds. */
int parse_seconds(const char *s, double *out, char *err, size_t errlen);
int parse_int(const char *s, long long min, long long max, long long *out, char *err, size_t errlen);
int parse_bool(const char *s, bool *out);
bool id_valid(const char *s, size_t len);
/* msg as printable UTF-8 ('?' for the rest) into buf. */
void str_printable(char *buf, size_t len, const char *msg);
/* Human sizes for messages: "512.0 MiB". */
const char *fmt_bytes(uint64_t n, char *buf, size_t len);
/* n in decimal at p (no NUL, at most 20 bytes); returns the end.  No printf: hot paths use it. */
char *fmt_uint(char *p, uint64_t n);

/* --- utf8.c: valid UTF-8 for every str we write ---------------------- */

/*
 * Each maximal ill-formed subpart (WHATWG/Unicode practice) becomes one
 * U+FFFD; overlongs, surrogates and code points over U+10FFFF are
 * ill-formed.  See utf8.c.
 */
bool utf8_valid(const char *s, size_t n);
/* The length (1-4) of the character or ill-formed subpart at s[0..n), n > 0. */
size_t utf8_next(const char *s, size_t n, bool *valid);
/* src[0..n) sanitized into dst (whole characters, NUL-terminated); bytes written. */
size_t utf8_sanitize(char *dst, size_t dstlen, const char *src, size_t n);
/*
 * The bytes of s[0..n) to take for a sanitized form of at most max bytes
 * that ends on a character boundary; more: s goes on past n (a character
 * cut short by its end waits).
 */
size_t utf8_cut(const char *s, size_t n, size_t max, bool more);
/* Pack s[0..n) as a str, sanitized when it is not valid UTF-8. */
void utf8_pack(msgpack_packer *pk, const char *s, size_t n);

/* --- url.c: where Redis is ------------------------------------------- */

enum url_kind { URL_TCP, URL_UNIX, URL_SENTINEL };

struct redis_url {
	enum url_kind kind;
	char *host;		/* URL_TCP */
	int port;
	char *path;		/* URL_UNIX */
	int db;
	char *user;		/* ACL user, may be NULL */
	char *password;		/* may be NULL */
	struct strv sentinels;	/* URL_SENTINEL: "host:port" each */
	char *master;		/* URL_SENTINEL: the master's name */
};

int url_parse(const char *s, struct redis_url *out, char *err, size_t errlen);
void url_free(struct redis_url *u);
/* The i-th sentinel's address (url_parse() checked them all). */
int url_sentinel(const struct redis_url *u, size_t i, char *host, size_t hostlen, int *port);
/* For logs: the URL without its password. */
char *url_display(const struct redis_url *u);
/* For messages about a URL that may not parse: its userinfo as "***". */
char *url_redact(const char *s);

/* --- config.c: worker.ini -------------------------------------------- */

enum sudo_mode { SUDO_AUTO, SUDO_YES, SUDO_NO };

struct phase_rule {
	char *name;
	char *pattern;		/* a substring of an output line */
};

struct config {
	char *path;		/* where it was read from, or NULL for defaults */

	/* [redis] */
	char *redis_url;
	char *redis_user;
	char *redis_password;
	char *redis_password_env;	/* name of an env variable holding it */
	double redis_connect_timeout;

	/* [queue] */
	char *namespace;
	long result_ttl;		/* seconds {ns}:result:<id> lives */
	long log_maxlen;		/* XADD MAXLEN ~ */
	long dead_maxlen;		/* LTRIM of {ns}:dead (10000), 0 = unbounded */
	uint64_t max_payload;
	long max_attempts;
	double retry_backoff;		/* seconds, doubled per attempt */
	double retry_backoff_max;

	/* [worker] */
	long concurrency;
	char *builds_root;
	double heartbeat_interval;
	double heartbeat_ttl;
	double reaper_interval;
	double drain_timeout;
	double stats_interval;
	bool keep_outputs;		/* keep worker-owned outputs after their upload */
	uint64_t min_free;		/* take no job while builds_root has less free */
	long profile_max_entries;	/* profile_archive caps */
	uint64_t profile_max_bytes;
	long profile_max_depth;
	double upload_timeout;		/* total seconds for one job's uploads */
	double upload_retry_backoff;	/* first wait between tries, doubled */
	struct strv upload_allow;	/* hosts upload.url may name ("host", "host:port", "*.domain"); empty: any */
	enum log_level log_level;
	char *metrics_listen;		/* "host:port" or NULL */
	long log_batch_lines;		/* lines per log event */
	double log_batch_interval;	/* seconds a line may wait */
	long log_max_lines;		/* lines published per job, then counted */
	long log_tail_lines;		/* lines kept for the result */
	uint64_t outbox_max;		/* bytes buffered while Redis is away */

	/* [sandbox] */
	char *runtime;			/* auto, docker, podman, exec, or a path */
	enum sudo_mode sudo;
	struct strv runtime_args;	/* global options before "run" */
	char *image;			/* default image */
	struct strv images;		/* allow list (image always allowed) */
	char *containerfile;		/* to build image when missing */
	uint64_t memory, max_memory;
	double cpus, max_cpus;
	double timeout, max_timeout, warning;
	long pids_limit;
	double stop_grace;		/* SIGTERM to SIGKILL on timeout */
	uint64_t collect_max_bytes;	/* artifacts: st_size summed over the output */
	long collect_max_files;		/* artifacts: entries in the output tree */
	long collect_max_depth;		/* artifacts: directory levels below the output */
	double collect_timeout;		/* artifacts: the least time hashing gets */
	char *network;			/* "none" by default */
	bool privileged;
	bool read_only;
	bool no_new_privileges;
	struct strv cap_add;
	struct strv env_allow;		/* host env names passed through */
	struct strv mounts;		/* extra "host:container[:ro]" */
	struct strv command;		/* the build command inside */

	/* [phases] */
	struct phase_rule *phases;
	size_t nphases;
};

void config_defaults(struct config *c);
/*
 * Parse path into c (which config_defaults filled).  On error returns -1
 * with "worker.ini:LINE: message" in err and c left to config_free().
 */
int config_load(const char *path, struct config *c, char *err, size_t errlen);
/* Cross-field checks (warning < timeout, maxima, ...). */
int config_check(const struct config *c, char *err, size_t errlen);
void config_free(struct config *c);
/* The config file to use: -c, else ./worker.ini, else /etc/debate/worker.ini. */
const char *config_find(const char *given);

/* --- keys.c: every key of the contract ------------------------------- */

struct keys {
	char *ns;
	char *prefix;		/* "{ns}:", which every key starts with */
	char *queue;		/* {ns}:queue */
	char *events;		/* {ns}:events */
	char *results;		/* {ns}:results */
	char *dead;		/* {ns}:dead */
	char *workers;		/* {ns}:workers (zset: id -> last beat) */
	char *cancel;		/* {ns}:cancel (hash: id -> ts) */
	char *delayed;		/* {ns}:delayed (zset: payload -> due) */
	char *reaper_lock;	/* {ns}:reaper */
	char *control;		/* {ns}:control channel */
};

void keys_init(struct keys *k, const char *ns);
void keys_free(struct keys *k);
/* "{ns}:<kind>:<id>" into buf; kind is job, progress, log, result, active, worker. */
const char *keys_id(const struct keys *k, const char *kind, const char *id, char *buf, size_t len);
#define KEY_MAX (ID_MAX + 128 + 64)

/* --- mpack.c: msgpack helpers ---------------------------------------- */

void mp_str(msgpack_packer *pk, const char *s);
void mp_strn(msgpack_packer *pk, const char *s, size_t n);
void mp_kv_str(msgpack_packer *pk, const char *k, const char *v);
void mp_kv_int(msgpack_packer *pk, const char *k, int64_t v);
void mp_kv_uint(msgpack_packer *pk, const char *k, uint64_t v);
void mp_kv_double(msgpack_packer *pk, const char *k, double v);
void mp_kv_bool(msgpack_packer *pk, const char *k, bool v);
void mp_kv_nil(msgpack_packer *pk, const char *k);
/* Find a key in a map object; NULL when absent or o is no map. */
const msgpack_object *mp_get(const msgpack_object *o, const char *key);
/* Copy a str object into buf; false if it is no str or too long. */
bool mp_get_str(const msgpack_object *o, const char *key, char *buf, size_t len);
bool mp_get_num(const msgpack_object *o, const char *key, double *out);
/*
 * Check a msgpack buffer before msgpack-c unpacks it: exactly one object,
 * nested at most max_depth, and no container announcing more elements
 * than bytes remain (so the unpacker's zone stays bounded by len).
 * Returns 0, -1 when malformed, -2 when nested too deep.
 */
int mp_precheck(const char *buf, size_t len, int max_depth, char *err, size_t errlen);
/* Unpack after mp_precheck; 0, or -1 (malformed) / -2 (too deep) with err. */
int mp_unpack(const char *buf, size_t len, int max_depth, msgpack_unpacked *out, char *err, size_t errlen);
/* Write o as JSON (bin as base64-less lossless "\u" escaped text). */
void mp_json(FILE *f, const msgpack_object *o);
#define MP_MAX_DEPTH 16

/* --- payload.c: a build job on the wire ------------------------------ */

/* Why a payload was refused; the names are in PROTOCOL.md. */
enum refusal {
	REFUSE_NONE = 0,
	REFUSE_TOO_LARGE,	/* payload_too_large */
	REFUSE_MALFORMED,	/* malformed: not one msgpack object */
	REFUSE_TOO_DEEP,	/* too_deep */
	REFUSE_NOT_MAP,		/* not_a_map */
	REFUSE_MISSING,		/* missing_field */
	REFUSE_TYPE,		/* wrong_type */
	REFUSE_VALUE,		/* bad_value */
	REFUSE_ID,		/* bad_id */
	REFUSE_PATH,		/* bad_path */
	REFUSE_IMAGE,		/* image_not_allowed */
	REFUSE_LIMIT,		/* over_limit */
	REFUSE_CLAIM,		/* claim_failed: Redis answered the claim with an error */
	REFUSE_ARCHIVE,		/* bad_archive: profile_archive cannot be unpacked safely */
};
const char *refusal_name(enum refusal r);

struct job_spec {
	char id[ID_MAX + 1];
	char *profile;			/* relative to builds_root, as given */
	char *output;
	int64_t source_date_epoch;
	bool has_epoch;
	uint64_t memory;
	double cpus;
	double timeout;
	double warning;
	long retries;			/* extra tries after a failed build */
	char *image;
	char *meta;			/* raw msgpack of meta, or NULL */
	size_t meta_len;
	double enqueued_at;		/* 0 when the producer gave none */
	char *profile_archive;		/* bin: a tar (gzip/zstd) of the profile, or NULL */
	size_t profile_archive_len;
	char *upload_url;		/* upload.url, or NULL: no upload */
	struct strv upload_headers;	/* "Name: value" each (values may be credentials) */
	unsigned omit;			/* JOB_OMIT_*: limits payload_encode leaves out */
};

/* Limits payload_encode() leaves out, so that the worker's defaults apply. */
#define JOB_OMIT_MEMORY 0x1
#define JOB_OMIT_CPUS 0x2
#define JOB_OMIT_TIMEOUT 0x4
#define JOB_OMIT_WARNING 0x8
#define JOBS_DIR "jobs"		/* builds_root/jobs/: the worker's own directories */
#define EPOCH_MAX 253402300799LL	/* 9999-12-31: the latest epoch accepted */

/*
 * Decode and validate a payload against the worker's limits.  Returns
 * REFUSE_NONE and fills js, or a refusal with a message naming the field
 * in err; js->id is filled whenever the payload had a readable valid id.
 * Paths are checked lexically here; path_open() checks the filesystem.
 */
enum refusal payload_decode(const char *buf, size_t len, const struct config *c,
    struct job_spec *js, char *err, size_t errlen);
void payload_free(struct job_spec *js);
/* Encode a job (for enqueue and tests): every field set, less js->omit. */
void payload_encode(const struct job_spec *js, msgpack_sbuffer *sb);

/* --- path.c: directories below builds_root, no symlink followed ------ */

struct path_id {
	dev_t dev;
	ino_t ino;
};

/* A directory held open: what a job mounts and writes is this, not a name. */
struct path_dir {
	int fd;			/* O_PATH descriptor of the directory */
	struct path_id *chain;	/* it, its parent, ... "/" (NULL: not open) */
	size_t depth;		/* entries in chain */
	char real[4096];	/* its path when opened: messages, exec mode */
};

/*
 * Open rel (relative to root; "." and repeated slashes are fine) as a
 * directory strictly below root, following no symlink at any depth and
 * refusing "..": openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS), else an
 * O_NOFOLLOW walk from root's descriptor.  With create, missing
 * directories are made with mkdirat() one at a time.  root itself may be
 * reached through a symlink (it is the operator's).  0, or -1 with a
 * message quoting rel in err.
 */
int path_open(const char *root, const char *rel, bool create, struct path_dir *pd, char *err,
    size_t errlen);
/*
 * The same in two steps, for a caller opening several: path_root() holds
 * builds_root (a symlink to it followed) with its chain, and
 * path_open_at() opens rel below it.  A chain found with the root held
 * walks only down to builds_root and copies the root's chain for the rest.
 */
int path_root(const char *root, struct path_dir *rd, char *err, size_t errlen);
int path_open_at(const struct path_dir *rd, const char *rel, bool create, struct path_dir *pd,
    char *err, size_t errlen);
/* Hold the directory fd names (fd itself stays the caller's); root as for path_open_at(), or NULL. */
int path_from_fd(int fd, const struct path_dir *root, struct path_dir *pd, char *err, size_t errlen);
void path_close(struct path_dir *pd);
/* Find pd's parents again (root held by path_root(), or NULL): the chain is as of its opening until then. */
void path_refresh(struct path_dir *pd, const struct path_dir *root);
/* Whether a and b are the same directory or one is below the other. */
bool path_nested(const struct path_dir *a, const struct path_dir *b);
/* path_open(), then the real path of the directory into out. */
int path_resolve(const char *root, const char *rel, bool create, char *out, size_t outlen,
    char *err, size_t errlen);
/* For tests: skip openat2 (the fallback walk), and a call after each mkdirat(). */
extern bool path_no_openat2;
extern void (*path_after_mkdir)(int dirfd, const char *name);

/* --- result statuses ------------------------------------------------- */

enum status {
	ST_QUEUED, ST_RUNNING, ST_SUCCEEDED, ST_FAILED, ST_TIMED_OUT,
	ST_OOM_KILLED, ST_CANCELLED, ST_ERROR, ST_DEAD,
};
const char *status_name(enum status s);
int status_parse(const char *s, enum status *out);

#endif
