/*
 * worker.h: the worker daemon, one section per module (tmux.h style).
 *
 * One libev default loop drives everything: two hiredis connections (one
 * for the blocking fetch, one for every other command), each job's child
 * process, pipes and timers, the heartbeat and the signals.  No threads.
 */
#ifndef WORKER_H
#define WORKER_H

#include <sys/queue.h>
#include <sys/types.h>

#include <ev.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include "debate.h"

struct job;

/* --- sandbox.c: the container runtime and the argv of every call ---- */

enum rt_kind { RT_DOCKER, RT_PODMAN, RT_EXEC };

struct runtime {
	enum rt_kind kind;
	char *path;		/* the runtime binary, or NULL for exec */
	bool sudo;		/* prefix calls with "sudo -n" */
};

/* What one build needs to be started; all strings borrowed. */
struct sandbox_spec {
	const char *ns;
	const char *job_id;
	const char *worker_id;
	long attempt;
	long long expires;	/* unix time the build must be gone by */
	const char *profile;	/* what the runtime binds: a private mount point */
	const char *output;	/* of the held directory (exec: the real path) */
	const char *cidfile;	/* where the runtime writes the container id */
	int64_t epoch;
	uint64_t memory;
	double cpus;
	long pids;
	const char *image;
};

int runtime_detect(const struct config *c, struct runtime *rt, char *err, size_t errlen);
void runtime_free(struct runtime *rt);
const char *runtime_name(const struct runtime *rt);
/* The argv that runs one build (pure: no I/O, unit tested). */
void sandbox_argv(const struct config *c, const struct runtime *rt, const struct sandbox_spec *s,
    struct strv *argv);
/* The environment of an exec-mode build (pure). */
void sandbox_env(const struct config *c, const struct sandbox_spec *s, char **environ_in,
    struct strv *env);
/* "<ns>-build-<id>" */
void sandbox_name(const char *ns, const char *job_id, char *buf, size_t len);
/* argv of "stop -t GRACE name", "rm -f name", "ps" by label, image checks. */
void sandbox_stop_argv(const struct config *c, const struct runtime *rt, const char *name,
    struct strv *argv);
/* "kill name": SIGKILL to the container, through the runtime. */
void sandbox_kill_argv(const struct config *c, const struct runtime *rt, const char *name,
    struct strv *argv);
void sandbox_rm_argv(const struct config *c, const struct runtime *rt, const char *name,
    struct strv *argv);
void sandbox_ps_argv(const struct config *c, const struct runtime *rt, const char *label,
    struct strv *argv);
/* "inspect" of one container (name or id): its full id, or its debate.worker label. */
/* inspect's format: "<full id> <debate.ns label> <debate.job label>". */
void sandbox_inspect_id_argv(const struct config *c, const struct runtime *rt, const char *what,
    struct strv *argv);
void sandbox_inspect_worker_argv(const struct config *c, const struct runtime *rt, const char *what,
    struct strv *argv);
void sandbox_base_argv(const struct config *c, const struct runtime *rt, struct strv *argv);

/* --- image.c: the build image, checked and built at start ----------- */

int image_ensure(const struct config *c, const struct runtime *rt, const char *image, char *err,
    size_t errlen);
/* runtime = auto: docker only when its daemon answers, else podman. */
void image_pick_runtime(const struct config *c, struct runtime *rt);

/* --- spawn.c: children ------------------------------------------------ */

/*
 * A helper process (stop, rm, ps): its stdout is collected, then done(),
 * exactly once.  Past its timeout (seconds; proc_run: PROC_TIMEOUT) its
 * process group is stopped (TERM, then KILL) and done() gets SIGKILL as
 * the status, or the real one if it exited but left its stdout held open.
 */
#define PROC_TIMEOUT 60.0
typedef void proc_done_cb(int wstatus, const char *out, size_t outlen, void *arg);
void proc_run(char *const argv[], proc_done_cb *done, void *arg);
void proc_run_timeout(char *const argv[], double timeout, proc_done_cb *done, void *arg);
/* Free p on the next loop iteration, never inside its own callback. */
void defer_free(void (*fn)(void *), void *p);
void defer_init(void);
void defer_flush(void);

/*
 * Start argv with stdout and stderr on fresh non-blocking pipes (either
 * fd pointer may be NULL for /dev/null) in its own process group.  envp
 * NULL inherits ours.  Returns the pid or -1 with err.
 */
pid_t spawn(char *const argv[], char *const envp[], int *out_fd, int *err_fd, char *err,
    size_t errlen);
/* Run argv to completion, blocking (start-up and rare paths only); its wait status. */
int proc_run_sync(char *const argv[], char **out, size_t outmax);

/* --- cgroup.c: memory and CPU of a running container ----------------- */

struct cgroup {
	char *mem_dir;		/* memory controller dir of the container */
	char *cpu_dir;		/* cpuacct (v1) or the same dir (v2) */
	bool v2;
	int event_fd;		/* v1 eventfd on memory.oom_control, v2 inotify */
	int watch_fd;		/* the file watched */
	uint64_t oom_kills;	/* highest count seen */
};

extern const char *cgroup_root;	/* "/sys/fs/cgroup" */
/* Find the cgroup of container cid; 0 or -1 when it is not (yet) there. */
int cgroup_find(const char *cid, struct cgroup *cg);
/* Arm a notification for OOM kills; returns the fd to watch or -1. */
int cgroup_watch_oom(struct cgroup *cg);
/* Re-read the OOM kill count; true when it rose since the last call. */
bool cgroup_oom_check(struct cgroup *cg);
bool cgroup_gone(const struct cgroup *cg);
int cgroup_stats(const struct cgroup *cg, uint64_t *mem, double *cpu);
void cgroup_close(struct cgroup *cg);
int cgroup_host_cpus(void);

/* --- rconn.c, rconnqueue.c: Redis connections, reconnects, the outbox */

enum rq_kind {
	RQ_KEEP,	/* sent until Redis answers, also after BUSY & co. (results, claims, dead letters) */
	RQ_DROP,	/* the same, but not queued when the outbox is full (log batches) */
	RQ_ONCE,	/* never replayed nor retried (heartbeats) */
};

typedef void rq_cb(redisReply *reply, void *arg);

struct rconn;

struct rconn *rconn_new(const char *name, bool outbox, void (*on_up)(struct rconn *),
    void (*on_down)(struct rconn *));
void rconn_start(struct rconn *rc);
void rconn_close(struct rconn *rc);
bool rconn_up(const struct rconn *rc);
redisAsyncContext *rconn_ctx(struct rconn *rc);
/* Send a command (argv form) through the outbox. */
void rconn_send(struct rconn *rc, enum rq_kind kind, rq_cb *cb, void *arg, int argc,
    const char **argv, const size_t *argvlen);
size_t rconn_outbox_bytes(const struct rconn *rc);
unsigned long rconn_reconnects(const struct rconn *rc);
unsigned long rconn_retried(const struct rconn *rc);
/* The retry policy: what an error reply means (see rconnqueue.c). */
enum reply_class {
	REPLY_ANSWER,		/* the command's answer: its callback sees it */
	REPLY_RETRY,		/* refused before it ran: sent again after a backoff */
	REPLY_RECONNECT,	/* not the master: reconnect, then send it again */
};
enum reply_class rconn_classify(const redisReply *r);
/* The fetch's own commands: one succeeded, or one failed and the connection must go. */
void rconn_ok(struct rconn *rc);
void rconn_drop(struct rconn *rc, const char *why);
/* Reply helpers. */
bool reply_is_error(const redisReply *r, const char *prefix);
/* The scripts (their text is in scripts.c), loaded at connect and called by SHA. */
enum script_id {
	SCRIPT_CLAIM, SCRIPT_EMIT, SCRIPT_FINISH, SCRIPT_REFUSE, SCRIPT_BEAT, SCRIPT_RELEASE,
	SCRIPT_COUNT
};
/* A script's text and its SHA1, as rconn loads (SCRIPT LOAD) and calls (EVALSHA) it. */
struct rconn_script {
	const char *body;
	const char *sha;
};
/* The SCRIPT_COUNT scripts, by script_id (main registers scripts.c's table before connecting). */
void rconn_scripts(const struct rconn_script *table);
/* Call a script through the outbox (EVALSHA; NOSCRIPT is handled). */
void script_call(struct rconn *rc, enum script_id id, enum rq_kind kind, rq_cb *cb, void *arg,
    int nkeys, int nargs, const char **args, const size_t *lens);

/* --- scripts.c: the Lua scripts that change job state atomically ---- */

/* Every script's text and SHA1, by script_id (for rconn_scripts()). */
const struct rconn_script *script_table(void);

/*
 * One typed call per script, each sent through the outbox of the command
 * connection.  The fields are what the caller knows; the keys, the
 * worker's id and the configured limits are filled in by scripts.c, in
 * the KEYS/ARGV order of the script's worker/lua/ header.  Every pointer
 * is borrowed for the call only.
 */
struct script_claim {
	const char *id;
	const char *payload;
	size_t payload_len;
	double now;		/* the claim's started_at */
	const char *started;	/* the started event, with placeholders */
	size_t started_len, seq_off, att_off;
};
void script_claim(const struct script_claim *c, rq_cb *cb, void *arg);

struct script_emit {
	const char *id;
	long attempt;
	uint64_t seq;
	const char *type;
	const char *event;	/* msgpack */
	size_t event_len;
	bool to_events;		/* also PUBLISH {ns}:events (all but log batches) */
	const char *phase;	/* recorded in the job hash, or NULL */
};
void script_emit(const struct script_emit *e, enum rq_kind kind, rq_cb *cb, void *arg);

struct script_finish {
	const char *id;
	long attempt;
	const char *payload;
	size_t payload_len;
	const char *result;	/* msgpack */
	size_t result_len;
	const char *finished;	/* the finished event, or NULL for a retry */
	size_t finished_len;
	uint64_t seq;
	const char *status;
	int exit_code;
	double finished_at;
	const char *error;
	double retry_due;	/* > 0: requeued for then instead of a result */
	const char *requeued;	/* the requeued event of a retry, or NULL */
	size_t requeued_len;
};
void script_finish(const struct script_finish *f, rq_cb *cb, void *arg);

struct script_refuse {
	const char *id;		/* "" when the payload had no valid one */
	size_t payload_len;
	const char *sha1;
	const char *sha256;	/* over max_payload, else NULL */
	const char *error;
	const char *reason;
	double now;
};
void script_refuse(const struct script_refuse *r, rq_cb *cb, void *arg);

struct script_beat {
	const char *mode;	/* the steps, see beat.lua */
	const char *jobs;	/* running job ids, comma-separated */
	size_t nrun;
	uint64_t free_bytes;
	bool disk_ok;
	double now;
	long ttl_ms;		/* the worker hash's expiry */
};
void script_beat(const struct script_beat *b, rq_cb *cb, void *arg);

struct script_release {
	bool all;		/* at exit: everything, and our heartbeat */
	double now;
	const char *const *held;	/* "<length>:<sha1>" of each payload we keep */
	size_t nheld;
};
void script_release(const struct script_release *r, rq_cb *cb, void *arg);

/* --- event.c: building and sending events ---------------------------- */

/* What the emit script answered (or that it was dropped or refused). */
enum emit_answer { EMIT_SENT, EMIT_FAILED, EMIT_LEASE_LOST, EMIT_CANCEL };
/* answered(j, a) for every event sent, once, when it is answered or dropped. */
void event_init(void (*answered)(struct job *j, enum emit_answer a));

struct event_msg {
	msgpack_sbuffer sb;
	msgpack_packer pk;
};

/* Start an event map with nfields type-specific fields to follow. */
void event_begin(struct job *j, struct event_msg *ep, const char *type, int nfields);
/* Send it: PUBLISH progress (and events), XADD log, in one script. */
/* Bytes of events not yet sent (the outbox's and those waiting behind a job's emit in flight). */
size_t event_backlog(void);
/* Whether j has an event in flight or waiting; idle(j) once it has none (at once if none). */
bool event_busy(const struct job *j);
void event_idle(struct job *j, void (*idle)(struct job *));
void event_send(struct job *j, struct event_msg *ep, const char *type, enum rq_kind kind,
    const char *phase);
/* The started event, with placeholders the claim script fills. */
void event_started(struct job *j, msgpack_sbuffer *sb, size_t *seq_off, size_t *att_off);
/* The result map of a finished job (into ep, not sent). */
void event_result(struct job *j, msgpack_sbuffer *sb);
/* An upload event: the artifact's name, bytes sent so far, its size, its URL as shown. */
void event_upload(struct job *j, const char *name, uint64_t bytes, uint64_t total, const char *url,
    enum rq_kind kind);

/* --- output.c: the build's stdout/stderr ----------------------------- */

struct outstream;

#define LINE_MAX_BYTES 8192
#define OUT_BUF (64 * 1024)

/* What a stream tells its job: each whole line (valid UTF-8), and its EOF. */
typedef void output_line_cb(struct job *j, struct outstream *os, const char *line, size_t len);
typedef void output_eof_cb(struct job *j);

struct outstream {
	struct job *job;
	const char *name;	/* "stdout" or "stderr" */
	output_line_cb *on_line;
	output_eof_cb *on_eof;
	ev_io io;
	int fd;
	bool eof;
	char *partial;		/* an unfinished line between reads (LINE_MAX_BYTES, made when needed) */
	size_t len;
	/* the batch being filled: lines packed as msgpack strs */
	msgpack_sbuffer batch;
	msgpack_packer batch_pk;
	uint32_t batch_n;
	ev_timer flush_timer;
};

void output_init(struct outstream *os, struct job *j, const char *name, int fd, output_line_cb *on_line,
    output_eof_cb *on_eof);
void output_start(struct outstream *os);
void output_flush(struct outstream *os);
/* End the stream now, as at EOF, with what is readable (on_eof is not called). */
void output_abandon(struct outstream *os);
void output_close(struct outstream *os);

/* --- collect.c: artifacts and their sha256 --------------------------- */

struct artifact {
	char *name;
	uint64_t size;
	char sha256[65];
};

struct collect;
/* polled(j, EMIT_CANCEL or EMIT_SENT) answers each cancel poll, as an event's answer. */
void collect_init(void (*polled)(struct job *j, enum emit_answer a));
/*
 * Start hashing dir's regular files (walked from fds, capped, with a
 * deadline) on an idle watcher; done() when finished, failed or cancelled.
 */
struct collect *collect_start(const char *dir, void (*done)(struct job *), struct job *j);
void collect_cancel(struct collect *co);
/* The job's status after collecting (pure): err gets the walk's failure. */
enum status collect_outcome(const struct collect *co, enum status st, char *err, size_t errlen);
const char *collect_error(const struct collect *co);
void collect_free(struct collect *co);
size_t collect_count(const struct collect *co);
const struct artifact *collect_get(const struct collect *co, size_t i);

/* --- paths.c: the directories a job holds, and their mounts --------- */

/*
 * A job's profile and output, held open from the fetch to the job's end:
 * what the container mounts and collect reads is these directories, never
 * a name resolved again.  All of a worker's held jobs are on one list.
 */
struct job_paths {
	TAILQ_ENTRY(job_paths) entry;
	const char *job_id;	/* the job's own id */
	struct path_dir profile, output;
	bool held;		/* on the worker's list */
	bool staged;		/* bind-mounted at the two points below */
	unsigned reg_handle;	/* its entries in the host's registry, or 0 */
	char *stage_profile, *stage_output;	/* private mount points, for the runtime */
	char collect_dir[40];	/* "/proc/self/fd/N" of the output */
};

/* Open both, check them against the jobs running here, hold them; -1 with err. */
int paths_take(struct job *j, char *err, size_t errlen);
/* Hold a directory the worker made (outdir_make) as the job's profile or output; -1 with err. */
int paths_adopt(struct job *j, bool output, int fd, char *err, size_t errlen);
/* Where the runtime binds from: private mount points (containers) or real paths (exec). */
int paths_stage(struct job *j, struct sandbox_spec *s, char *err, size_t errlen);
/* The held output for collect, by a name no build can change (exec: its real path). */
const char *paths_collect_dir(struct job *j);
/* Unmount, close, forget; safe on a job that holds nothing. */
void paths_release(struct job *j);

/* --- registry.c: the directories held by every worker on this host --- */

/*
 * Check a job's named directories (NULL, or not open: none) against what
 * the other workers on this host sharing builds_root hold, and record
 * them under *handle; -1 with err naming the clash (a running job of the
 * same namespace and id is its stale attempt, not a clash).
 */
int registry_take(const char *job_id, const struct path_dir *prof, const char *prof_name,
    const struct path_dir *out, const char *out_name, unsigned *handle, char *err, size_t errlen);
/* Forget what registry_take() recorded under handle (0: nothing). */
void registry_drop(unsigned handle);

/* --- regline.c: a line of the registry, and the check against it ---- */

/* What a job asks to hold, as registry_take() was given it. */
struct regline_want {
	const char *ns, *job_id;
	const struct path_dir *prof, *out;	/* NULL: none */
	const char *prof_name, *out_name;	/* as the job named them, for messages */
	char *err;				/* names the clash */
	size_t errlen;
};

/* The line recording pd as the job's output ('o') or profile ('p'); malloc'd, its length in len. */
char *regline_format(const char *ns, const char *job_id, char kind, const struct path_dir *pd,
    size_t *len);
/* Whether w's directories overlap the one a line of worker wid's file holds (line is cut up). */
bool regline_clash(char *line, const char *wid, const struct regline_want *w);

/* --- archive.c: unpacking profile_archive safely --------------------- */

struct unpack_caps {
	long max_entries;
	uint64_t max_bytes;		/* bytes actually written, all files */
	long max_depth;
};

struct unpack;
/* A reader of data (borrowed until unpack_free) into the directory rootfd. */
struct unpack *unpack_new(int rootfd, const char *data, size_t len, const struct unpack_caps *caps);
/* One slice of work; true when over (then unpack_result). */
bool unpack_step(struct unpack *u);
/* unpack_new, then slices from an idle watcher; done(j) when over. */
struct unpack *unpack_start(int rootfd, const char *data, size_t len, const struct unpack_caps *caps,
    void (*done)(struct job *), struct job *j);
/* 0 when unpacked; -1 with *err naming the entry (bad_archive). */
int unpack_result(const struct unpack *u, const char **err);
void unpack_free(struct unpack *u);

/* --- outdir.c: the worker's own directories and the disk check ------- */

/*
 * Make builds_root/jobs/<id>/<leaf> fresh, never following a symlink
 * (leaf NULL: a new "profile.XXXXXX").  Its real path goes to path, an
 * fd of it to *fd.  An existing leaf is moved aside, never reused.
 */
int outdir_make(const char *id, const char *leaf, char *path, size_t pathlen, int *fd, char *err,
    size_t errlen);
/* Remove a directory outdir_make() made (rm -rf in a helper process). */
void outdir_remove(const char *path);
/* Whether path is builds_root/jobs or below (the worker's own). */
bool outdir_is_owned(const char *real);
/* Free bytes in builds_root; true when at least min_free (0: no check). */
bool outdir_disk_ok(uint64_t *free_bytes);
/* Re-check the disk every heartbeat while it is low; room() when it has room again. */
void outdir_disk_wait(void (*room)(void));

/* --- upload.c: PUT artifacts with libcurl, driven by the loop -------- */

struct upload;
/*
 * Upload every artifact of j's collect from the output dir; progress()
 * as each file goes (event_upload's arguments), done(j) when over.
 */
struct upload *upload_start(struct job *j, void (*progress)(struct job *j, const char *name, uint64_t bytes,
    uint64_t total, const char *url, enum rq_kind kind), void (*done)(struct job *));
/* 0 when every artifact is uploaded; -1 with *err. */
int upload_result(const struct upload *u, const char **err);
/* The i-th artifact's URL (without query or userinfo) and whether it arrived. */
const char *upload_url(const struct upload *u, size_t i, bool *uploaded);
/* Stop it (a cancel): done(j) follows from the loop, and upload_result() fails. */
void upload_cancel(struct upload *u);
void upload_free(struct upload *u);
/* At exit: the multi handle and libcurl's globals. */
void upload_shutdown(void);

/* --- uploadurl.c: an upload's URL and digest (pure) ------------------ */

/* The URL of name under url ({name} replaced, or appended), percent-encoded (pure). */
char *upload_target(const char *url, const char *name);
/* url without userinfo, query and fragment: what logs, events and results show (pure). */
char *upload_display(const char *url);
/* base64 of the sha256 given in hex, for Content-Digest (pure); -1 if hex is not one. */
int upload_digest_b64(const char *hex, char *out, size_t outlen);

/* --- outcome.c: how a build ended (pure) ----------------------------- */

enum stop_reason { STOP_NONE, STOP_TIMEOUT, STOP_CANCEL, STOP_DRAIN, STOP_LEASE };

/*
 * Exit status, flags and signals to one status, and into err the message
 * the result records (pure, unit tested).  memory and timeout are the
 * job's limits, which the OOM and timeout messages name.
 */
enum status outcome_decide(enum rt_kind rt, int wstatus, bool oom, enum stop_reason stop, uint64_t memory,
    double timeout, int *exit_code, char *err, size_t errlen);
/* Append the runtime's own complaint from the tail ring (its last "Error" line) to err (pure). */
void outcome_detail(char *err, size_t errlen, const struct strv *tail, size_t next);

/* --- job.c: one build from fetch to result (struct job: job.h) -------- */

TAILQ_HEAD(jobs, job);

/* What the job module tells the rest of the worker (main.c registers them). */
struct job_hooks {
	void (*slot_freed)(void);	/* a job gave its slot back: fetch again */
	void (*job_gone)(void);		/* a job is over and off the list: perhaps exit */
};

void job_init(const struct job_hooks *h);
/* A payload BLMOVE gave us; NULL (with its hashes) when it was over max_payload. */
void job_fetched(const char *payload, size_t len, const char *sha1, const char *sha256);
/* Stop a running build (or abandon its upload) for why; nothing when it does not run. */
void job_stop(struct job *j, enum stop_reason why);

/* --- fetch.c: BLMOVE, refusal and the release of held jobs ----------- */

/* fetched gets each payload BLMOVE brings (as job_fetched). */
void fetch_init(void (*fetched)(const char *payload, size_t len, const char *sha1, const char *sha256));
void fetch_kick(void);
void fetch_recover_later(void);
void fetch_stop(void);
/* Dead-letter j's payload for r, msg; done(j) once Redis answered. */
void fetch_refuse(struct job *j, enum refusal r, const char *msg, void (*done)(struct job *));

/* --- beat.c: heartbeat, reaper, orphans, graceful stop --------------- */

void beat_init(void);
void beat_now(void);
void beat_stop(void);
/* Put back every payload in our active list that we do not hold. */
void beat_release(bool all, void (*done)(bool ok));
void beat_sweep_orphans(const char *worker_id);

/* --- metrics.c: the Prometheus endpoint ------------------------------ */

struct metrics {
	unsigned long jobs_by_status[ST_DEAD + 1];
	unsigned long refused;
	unsigned long lines_published, lines_dropped;
	unsigned long results_refused;
	unsigned long hist[12];	/* build durations, see metrics.c buckets */
	double duration_sum;
	unsigned long duration_count;
};

int metrics_start(const char *listen, char *err, size_t errlen);
void metrics_stop(void);
void metrics_duration(double secs);
extern long long metrics_queue_len;

/* --- notify.c: sd_notify, loaded only under systemd ------------------ */

void notify_init(void);
void notify_send(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
double notify_watchdog_interval(void);

/* --- main.c: the process ---------------------------------------------- */

struct worker {
	struct config *conf;
	struct keys keys;
	char id[ID_MAX + 64];
	char host[256];
	struct ev_loop *loop;
	struct runtime rt;
	struct rconn *cmd;	/* every command but the fetch */
	struct rconn *fetch;	/* BLMOVE only */
	struct jobs jobs;
	long slots;		/* concurrency */
	long held;		/* jobs holding a slot */
	bool once;		/* exit after one job */
	unsigned long done;	/* jobs finished */
	bool draining;		/* SIGTERM: take no more jobs */
	bool stopping;		/* jobs being stopped, then exit */
	double started_at;
	char *cid_dir;		/* where cidfiles go */
	struct metrics m;
	int host_cpus;
};

extern struct worker *wk;

#endif
