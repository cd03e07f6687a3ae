/*
 * job.h: struct job and the job module's own functions, for the files
 * that need a job's fields (worker.h only declares struct job).
 *
 * The job module is four files: job.c (the state machine, the fetch to
 * the claim, the end of a job), jobrun.c (the child: start, output,
 * stop), conflict.c (the name-conflict retry) and jobend.c (outcome,
 * artifacts, upload, the finish script).  Only they change a job's state, through
 * job_set_state(); watch.c, event.c and output.c only read it.
 */
#ifndef JOB_H
#define JOB_H

#include "worker.h"

enum job_state {
	JOB_UNPACKING,	/* profile_archive being unpacked, before the claim */
	JOB_CLAIMING,	/* claim script in flight */
	JOB_STARTING,	/* resolving paths, spawning */
	JOB_RUNNING,	/* child alive */
	JOB_STOPPING,	/* timeout, cancel or drain: stop sent */
	JOB_COLLECTING,	/* child reaped and pipes at EOF: hashing artifacts */
	JOB_UPLOADING,	/* PUTting the artifacts to upload.url */
	JOB_FINISHING,	/* finish script in flight */
	JOB_REFUSING,	/* dead-letter script in flight */
	JOB_DONE,	/* nothing left; freed from the loop */
};

struct job {
	TAILQ_ENTRY(job) entry;
	enum job_state state;
	char *payload;		/* the exact bytes in our active list; NULL when over max_payload */
	size_t payload_len;
	char payload_sha1[41];	/* how release and refuse find it in our active list */
	char payload_sha256[65];	/* over max_payload: what its dead letter keeps */
	struct job_spec spec;
	char id[ID_MAX + 1];	/* spec.id, or "" while unknown */
	long attempt;
	uint64_t seq;		/* last event seq sent */
	double started_at, finished_at, started_mono;

	/* the child */
	pid_t pid;
	ev_child child;
	bool reaped;
	int wstatus;
	struct outstream out, err;
	char cidfile[256];
	char cname[ID_MAX + 128];
	char profile_path[4096], output_path[4096];
	struct job_paths paths;	/* the held profile and output */

	bool profile_owned, output_owned;	/* made by the worker: removed by it */
	int profile_fd;		/* the unpack's directory, or -1 */
	struct unpack *unpack;
	struct upload *upload;

	ev_timer warn_timer, timeout_timer, stats_timer, cid_timer, kill_timer;
	ev_timer cancel_poll;	/* while uploading: was the job cancelled? */
	ev_io oom_io;
	struct cgroup cg;
	bool cg_found;
	bool oom;
	enum stop_reason stop;
	int kills;		/* stop stages done (job_kill_cb) */
	double cpus_clamped_from;

	/* output bookkeeping */
	struct strv tail;	/* ring of the last lines */
	size_t tail_next;
	uint64_t lines_sent, lines_dropped, dropped_unreported;
	int phase;		/* index in conf->phases, -1 before the first */

	/* the outcome */
	enum status status;
	int exit_code;
	char error[ERR_MAX];
	struct collect *collect;
	double retry_due;	/* > 0: retried at that time instead of a result */
	bool lease_lost;
	bool has_slot;
	bool conflict_retried;	/* exit 125 checked for a name conflict once */
	char cid[80];		/* our container's id, once the cidfile had it */
	bool no_container;	/* stopped between a conflict's runs: nothing of ours to rm */
	bool container_dirty;	/* the container may outlive the client: rm -f */
	unsigned emits;		/* emit scripts (and collect.c cancel polls) not answered yet */
	TAILQ_HEAD(, event_wait) ev_wait;	/* events behind the one in flight (event.c) */
	bool ev_busy;		/* an emit of this job is in flight */
	void (*ev_idle)(struct job *);	/* called once none is (the finish waits) */
};

/* job.c: the state machine */
/* Change state along an edge of the table in job.c; false (and refused) for any other. */
bool job_set_state(struct job *j, enum job_state s);
const char *job_state_name(enum job_state s);
/* Strict: an illegal transition is fatal (set by -DJOB_STRICT_STATES, or by a test). */
extern bool job_strict_states;
/* Give the job's slot back (once). */
void job_release_slot(struct job *j);
/* The job is over for this worker: forget it, freed later. */
void job_done(struct job *j);
/* End a job before its build could run: a result with status and error, no artifacts. */
void job_end_early(struct job *j, enum status st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Timers and watchers of a job, by group, for job_timers_stop(). */
#define JOB_T_LIMITS 0x1	/* the warning and the timeout */
#define JOB_T_KILL 0x2		/* the stop stages and the EOF deadline */
#define JOB_T_WATCH 0x4		/* stats, cidfile and OOM (watch.c) */
#define JOB_T_POLL 0x8		/* the cancel poll of an upload */
#define JOB_T_ALL (JOB_T_LIMITS | JOB_T_KILL | JOB_T_WATCH | JOB_T_POLL)
void job_timers_stop(struct job *j, unsigned which);
/* The upload's cancel poll (jobrun.c). */
void job_cancel_poll_cb(EV_P_ ev_timer *w, int revents);
void job_lease_lost(struct job *j);
void job_cancel_seen(struct job *j);
void job_emit_answered(struct job *j);

/* jobrun.c: the child */
/* Init a fetched job's run timers and streams. */
void job_run_init(struct job *j);
/* Start the child; the job is RUNNING after it, or ending early. */
void job_spawn(struct job *j);
/* Start the warning, timeout and stats timers of a job that now runs. */
void job_run_timers(struct job *j);
/* A stop asked for why, noted only between a name conflict's two runs. */
void job_stop_asked(struct job *j, enum stop_reason why);
/* No output in the job: make the worker's own; false when the job ended early instead. */
bool job_own_output(struct job *j);

/* conflict.c: exit 125 and a container that has our name */
/* Start the check when the runtime failed on a first run; true when the job waits for it. */
bool job_conflict_begin(struct job *j);

/* jobend.c: outcome to result */
/* Child reaped and pipes at EOF: decide the outcome, clean up, collect. */
void job_end(struct job *j);
/* The artifacts are hashed: upload, then the finish script. */
void job_collected(struct job *j);

/* watch.c: the container while it runs */
void watch_init(struct job *j);
void watch_start(struct job *j);
void watch_stats_start(struct job *j);
void watch_end(struct job *j);
void watch_reset(struct job *j);
void watch_stop(struct job *j);
/* Our container's id once the cidfile has it, else its name. */
const char *watch_container(const struct job *j, char *buf, size_t len);

#endif
