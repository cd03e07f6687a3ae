/*
 * enqueue.h: the enqueue command-line client, one section per module
 * (tmux.h style).
 *
 * Blocking hiredis throughout: one command connection, and a second one
 * for SUBSCRIBE where a command follows a job's events.  Every command
 * parses its options, then enq_setup() reads worker.ini and connects.
 * Errors print "enqueue: message" on stderr and exit with a code below.
 */
#ifndef ENQUEUE_H
#define ENQUEUE_H

#include <signal.h>

#include <hiredis/hiredis.h>

#include "debate.h"

/* Exit codes; a waited-for job's status maps to 0, 1 and 3 to 7. */
#define EXIT_OK 0
#define EXIT_FAILED 1		/* the job failed; or a job is unknown */
#define EXIT_USAGE 2		/* bad option, bad value, bad worker.ini */
#define EXIT_TIMED_OUT 3
#define EXIT_OOM 4
#define EXIT_CANCELLED 5
#define EXIT_ERROR 6
#define EXIT_DEAD 7
#define EXIT_REDIS 8		/* cannot reach Redis, or a wait timed out */
#define EXIT_INTERRUPTED 130

/* --- main.c: options, dispatch, set-up, exits ------------------------ */

struct opt {
	const char *name;	/* long name, without "--" */
	int letter;		/* short option, or 0 */
	bool has_arg;
	int id;			/* > 0; returned by opt_next() */
};

struct opt_state {
	int argc;
	char **argv;
	int i;			/* next argv index */
	const char *cmd;	/* the subcommand, for messages and --help */
	bool rest;		/* after "--": everything is positional */
};

#define OPT_END (-1)
#define OPT_ARG 0		/* a positional argument */

struct enq {
	const char *config_path;	/* -c */
	const char *redis_url;		/* --redis */
	bool json;			/* --json */
	bool raw;			/* --raw: build output unescaped on a terminal */
	struct config conf;
	bool conf_loaded;
	struct keys keys;
	redisContext *rc;		/* commands */
	redisContext *sub;		/* SUBSCRIBE, when following */
};

extern struct enq *en;
extern volatile sig_atomic_t enq_interrupted;

void opt_init(struct opt_state *st, int argc, char **argv, const char *cmd);
/* The next option's id, OPT_ARG (a positional in *arg) or OPT_END. */
int opt_next(struct opt_state *st, const struct opt *opts, const char **arg);
/* Read worker.ini, apply --redis / REDIS_URL, connect. */
void enq_setup(bool connect);
/* Print "enqueue: ..." on stderr and exit with code. */
void enq_die(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3), noreturn));
void enq_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Usage error in a subcommand: the message and a hint, exit 2. */
void enq_usage(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3), noreturn));
/* Catch SIGINT and SIGTERM into enq_interrupted (for the loops). */
void enq_catch_signals(void);
/* A job id argument: valid or exit 2. */
const char *enq_job_id(const char *cmd, const char *s);
/* The one job id a command takes (its only argument): valid or exit 2. */
const char *enq_one_id(int argc, char **argv, const char *cmd);

/* --- redis.c: connecting and talking to Redis ------------------------ */

redisContext *redis_connect(const struct config *c);
void redis_close(redisContext **ctx);
/* Run a command; exits 8 when Redis is away or answers an error. */
redisReply *redis_command(redisContext *ctx, int argc, const char **argv, const size_t *lens);
/* The same with C strings: redis_commandv(ctx, "HGET", key, "state"). */
#define redis_commandv(ctx, ...) redis_command_list((ctx), (const char *[]){ __VA_ARGS__, NULL })
redisReply *redis_command_list(redisContext *ctx, const char **argv);
/* Wait up to ms for a pushed reply (pub/sub): 1 got one, 0 none yet. */
int redis_poll(redisContext *ctx, int ms, redisReply **out);
/* SUBSCRIBE ctx to channel and read the confirmation. */
void redis_subscribe(redisContext *ctx, const char *channel);
/* The integer answer of `cmd key` (LLEN, ZCARD...); 0 when not an integer. */
long long redis_count(redisContext *ctx, const char *cmd, const char *key);
/* A hash as a map-shaped reply: the value of field, or NULL. */
const char *redis_field(const redisReply *r, const char *field);
/* Find the payload of job id in list key: its index (-1 when absent). */
long redis_find_payload(redisContext *ctx, const char *key, const char *id,
    msgpack_unpacked *out);

/* --- print.c: events, results, colours, the progress bar, JSON ------- */

struct printer {
	bool color;		/* ANSI colours on stdout */
	bool bar;		/* draw the progress bar (stdout is a terminal) */
	bool multi;		/* events of many jobs: id and clock lead */
	bool json;		/* one JSON object per event line */
	uint64_t last_seq;	/* highest seq printed (per-job mode) */
	double started;		/* ts of the latest started event */
	double timeout;		/* from the started event's limits */
	char phase[64];
	uint64_t memory;	/* from the last stats event */
	bool bar_drawn;
	bool done;		/* finished or dead seen */
	char status[32];	/* the final status, when done */
};

struct jbuf {
	msgpack_sbuffer sb;
	msgpack_packer pk;
};

/* An SGR sequence ("1;33"), or "" unless stdout is a terminal and NO_COLOR unset. */
const char *print_sgr(const char *code);
/*
 * Text from Redis (build output, errors, names) to stdout: on a terminal,
 * unless --raw, control characters but tab and newline (C0, DEL, C1) and
 * bytes that are not UTF-8 are written escaped ("\x1b", "\u009b"), so a
 * build cannot drive the terminal.  To a pipe or file the bytes pass.
 */
void print_text(const char *s, size_t n);
/* The same for a printf argument: s escaped into one of a ring of buffers. */
const char *print_safe(const char *s);
void print_init(struct printer *p, bool multi, bool json);
/* fflush(stdout); exit quietly when the reader went away. */
void print_flush(void);
/* Print an event given as msgpack bytes; false when it was a duplicate. */
bool print_event_raw(struct printer *p, const char *buf, size_t len);
void print_bar(struct printer *p);
void print_bar_clear(struct printer *p);
void print_result(const msgpack_object *res, bool json);
/* The exit code for a job status name (EXIT_ERROR when unknown). */
int print_status_exit(const char *status);
/* "1h02m", "12.3s" */
const char *print_duration(double secs, char *buf, size_t len);
/* Build JSON as msgpack, then print it through mp_json(). */
void print_json_begin(struct jbuf *jb);
void print_json_end(struct jbuf *jb);
void print_json_kv_str(struct jbuf *jb, const char *k, const char *v);
/* A Redis reply as msgpack: strings, integers, arrays; nil otherwise. */
void print_json_reply(struct jbuf *jb, const redisReply *r);
/* Unpack a copy of buf into out (re-used); false, out empty, when invalid. */
bool print_unpack(const char *buf, size_t len, msgpack_unpacked *out);

/* --- submit.c: enqueue submit (with --wait) --------------------------- */

int submit_main(int argc, char **argv);

/* --- watch.c: enqueue watch, submit --follow ----------------------- */

int watch_job(const char *id, double timeout);
int watch_main(int argc, char **argv);

/* --- status.c: enqueue status ---------------------------------------- */

int status_main(int argc, char **argv);

/* --- queue.c: enqueue queue ------------------------------------------ */

int queue_main(int argc, char **argv);

/* --- cancel.c: enqueue cancel ---------------------------------------- */

int cancel_main(int argc, char **argv);

/* --- logs.c: enqueue logs, the stream replay ------------------------- */

int logs_main(int argc, char **argv);
/* Replay {ns}:log:<id> through p (which skips seqs seen); events read. */
size_t logs_replay(struct printer *p, const char *id);

/* --- dead.c: enqueue dead -------------------------------------------- */

/* One dead letter, decoded. */
struct dead_entry {
	char id[ID_MAX + 1];
	char reason[64];
	char worker[128];
	char error[1024];
	double ts;
	const char *payload;	/* into the unpacked entry */
	size_t payload_len;	/* also payload_len of an entry that kept no payload */
	bool ok;		/* the entry was a readable map */
};

int dead_main(int argc, char **argv);
/* Decode an entry of {ns}:dead (u holds what the fields point into). */
void dead_decode(const redisReply *e, msgpack_unpacked *u, struct dead_entry *d);
/* Fill d->id from the payload when the entry did not name one. */
void dead_payload_id(struct dead_entry *d);

/* --- retry_dead.c: enqueue retry-dead -------------------------------- */

int retry_dead_main(int argc, char **argv);

/* --- workers.c: enqueue workers; the workers and their running jobs -- */

struct workers_job {
	char id[ID_MAX + 1];
	char state[32];
	char phase[64];
	double started_at;	/* 0 when unknown */
	double timeout;		/* 0 when unknown */
};

struct workers_entry {
	char *id;
	double score;		/* the last beat, from {ns}:workers */
	bool lost;		/* its heartbeat hash expired */
	char *host;
	char *version;
	long pid;
	double started_at;
	double beat;
	long concurrency;
	long running;
	double disk_free;	/* bytes free in its builds_root */
	bool disk_low;		/* below its min_free: it takes no job */
	struct workers_job *jobs;
	size_t njobs;
};

struct workers {
	struct workers_entry *w;
	size_t n;
};

/* Read every worker; with timeouts, each job's timeout from its payload. */
void workers_load(redisContext *ctx, struct workers *f, bool timeouts);
void workers_free(struct workers *f);
int workers_main(int argc, char **argv);

/* --- top.c: enqueue top ---------------------------------------------- */

int top_main(int argc, char **argv);

/* --- pack.c: submit --profile-dir ------------------------------------ */

/* DIR as a .tar.gz in memory; 0, or -1 with err. */
int pack_dir(const char *dir, char **out, size_t *outlen, char *err, size_t errlen);

#endif
