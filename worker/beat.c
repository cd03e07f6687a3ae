/*
 * beat.c: the heartbeat (which also reaps dead workers and promotes due
 * retries, in one script, so an idle worker sends one command per
 * heartbeat interval besides its blocking fetch), the release of payloads
 * we do not hold, and the removal of orphan containers on this host.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "job.h"

static ev_periodic beat_timer;

/*
 * The beat grid.  Redis's CPU for an idle fleet goes almost all to
 * waking up for a request (epoll, the scheduler, the loopback send of the
 * reply), not to the commands: 200 beats a second spread over time cost
 * it 3% of a core, the same 200 beats arriving in groups of 20 cost 0.85%
 * (README, Performance).  So a worker beats on the wall clock's grid of
 * BEAT_GRID seconds, in a slot picked by its id: every worker with the
 * same heartbeat_interval and slot beats in the same instant, and Redis
 * takes their beats in one wakeup.  A fleet then wakes Redis for its
 * beats at most 1 / BEAT_GRID times a second, however large it is; a
 * group is fleet / (heartbeat_interval / BEAT_GRID) workers (20 of 1,000
 * at 5 s), a few hundred microseconds of Redis's time.  The beats still
 * come every heartbeat_interval (an ev_periodic on that interval; libev
 * reschedules it when the clock jumps), so liveness by heartbeat_ttl is
 * unchanged; only the first timed beat may come sooner than an interval
 * after the one sent when the connection came up.
 */
#define BEAT_GRID 0.1

/*
 * What Redis knows of us, so that a beat sends only what changed (beat.lua
 * lists the modes).  Updated only from answers: a beat whose answer was
 * lost sends the same again next time.
 */
#define BEAT_REFRESH_EVERY 12	/* beats between two refreshes of the hash's expiry and the orphans */
static struct {
	bool registered;	/* the static fields are written */
	char *jobs;		/* the running jobs Redis has ("n:id,id"), or NULL */
	unsigned long count;	/* beats sent */
	double last_ok;		/* when the last beat was answered */
	double reap_after;	/* may reap from then on (the outage rule) */
} bs;

struct beat_sent {
	char *jobs;		/* what a 'd' beat wrote, or NULL */
	bool reg;		/* an 's' beat */
};

/*
 * A beat was answered at now.  The outage rule, ours to keep: after a
 * gap in our answered beats longer than heartbeat_ttl (Redis, or we,
 * were away), or at start, we reap nobody for a heartbeat_ttl, so that
 * every live worker has had a ttl to beat again before its old score is
 * taken for death.
 */
static void
beat_answered(void)
{
	double now = now_real();

	if (bs.last_ok == 0 || now - bs.last_ok > wk->conf->heartbeat_ttl)
		bs.reap_after = now + wk->conf->heartbeat_ttl;
	bs.last_ok = now;
}

/* The beat script's answer: workers reaped, orphans of this host, the queue length. */
static void
beat_reply(redisReply *r, void *arg)
{
	struct beat_sent *s = arg;

	if (r == NULL || r->type == REDIS_REPLY_ERROR || r->type != REDIS_REPLY_ARRAY || r->elements != 4) {
		if (r != NULL && r->type == REDIS_REPLY_ERROR)
			log_err("heartbeat: %s", r->str);
		if (s != NULL)
			free(s->jobs);
		free(s);
		return;
	}
	beat_answered();
	if (s != NULL) {
		if (s->reg)
			bs.registered = true;
		if (s->jobs != NULL) {
			free(bs.jobs);
			bs.jobs = s->jobs;
		}
		free(s);
	}
	if (r->element[2]->integer >= 0)
		metrics_queue_len = r->element[2]->integer;
	for (size_t i = 0; i + 1 < r->element[0]->elements; i += 2) {
		log_notice("reaper: worker %s missed its heartbeat; %s of its jobs went back to the queue "
		    "or to dead", r->element[0]->element[i]->str, r->element[0]->element[i + 1]->str);
	}
	for (size_t i = 0; i < r->element[1]->elements; i++)
		beat_sweep_orphans(r->element[1]->element[i]->str);
}

static void beat_script(const char *mode, const char *jobs, size_t nrun, uint64_t free_bytes, bool disk_ok,
    struct beat_sent *s);

/* We were not in {ns}:workers (reaped while cut off, or Redis lost its data): register again. */
static void
beat_missing(void)
{
	log_notice("heartbeat: this worker was missing from the workers set; registering again");
	bs.registered = false;
	free(bs.jobs);
	bs.jobs = NULL;
	beat_now();
}

/* The plain ZADD of an idle beat: 1 when we were not a member. */
static void
beat_zadd_reply(redisReply *r, void *arg)
{
	(void)arg;
	if (r == NULL || r->type != REDIS_REPLY_INTEGER) {
		if (r != NULL && r->type == REDIS_REPLY_ERROR)
			log_err("heartbeat: %s", r->str);
		return;
	}
	beat_answered();
	if (r->integer == 1)
		beat_missing();
}

/*
 * Whether we may reap now: our beats have been answered without a gap
 * for a ttl (beat_answered), the last one within the ttl (a beat that
 * comes after a gap must first be answered: its answer starts the wait).
 */
static bool
beat_may_reap(void)
{
	double now = now_real();

	return bs.reap_after > 0 && now >= bs.reap_after && now - bs.last_ok <= wk->conf->heartbeat_ttl;
}

/* The reaper lock: taken (OK), so reap now, under it (the ZADD's answer came first). */
static void
beat_lock_reply(redisReply *r, void *arg)
{
	(void)arg;
	if (r != NULL && r->type == REDIS_REPLY_STATUS && strcmp(r->str, "OK") == 0 && beat_may_reap())
		beat_script("r", "", 0, 0, true, NULL);
}

/* The beat script's reply, for the 'r' and letter modes alike. */
static void
beat_script_reply(redisReply *r, void *arg)
{
	struct beat_sent *s = arg;
	bool missing = r != NULL && r->type == REDIS_REPLY_ARRAY && r->elements == 4 &&
	    r->element[3]->type == REDIS_REPLY_INTEGER && r->element[3]->integer == 1 &&
	    s != NULL && !s->reg;

	beat_reply(r, s);	/* frees s */
	if (missing)
		beat_missing();
}

/* Send the beat script in mode (s: what it writes, kept until it is answered). */
static void
beat_script(const char *mode, const char *jobs, size_t nrun, uint64_t free_bytes, bool disk_ok,
    struct beat_sent *s)
{
	const struct config *c = wk->conf;

	/* The hash outlives the beats between two refreshes; the reaper deletes a dead one's. */
	script_beat(&(struct script_beat) {
	    .mode = mode, .jobs = jobs, .nrun = nrun, .free_bytes = free_bytes, .disk_ok = disk_ok,
	    .now = now_real(),
	    .ttl_ms = (long)((c->heartbeat_ttl + (BEAT_REFRESH_EVERY + 1) * c->heartbeat_interval) * 1000),
	}, beat_script_reply, s);
}

/*
 * Beat now.  An idle beat is two plain commands, ZADD {ns}:workers and
 * (when we may reap) SET {ns}:reaper NX PX; the beat script runs only
 * when there is something to write: at start (the static fields), when
 * our jobs changed, every BEAT_REFRESH_EVERY beats (the hash's expiry,
 * this host's orphans, the queue length), and to reap once the SET took
 * the lock.
 */
void
beat_now(void)
{
	char mode[8], *jobs, *key, sc[32];
	size_t jl = 0, nrun = 0, m = 0;
	bool may_reap = beat_may_reap();
	uint64_t free_bytes;
	bool disk_ok = outdir_disk_ok(&free_bytes);
	struct job *j;

	jobs = xstrdup("");
	TAILQ_FOREACH(j, &wk->jobs, entry) {
		if (j->state != JOB_RUNNING && j->state != JOB_STOPPING)
			continue;
		jobs = xrealloc(jobs, jl + strlen(j->id) + 2);
		jl += (size_t)sprintf(jobs + jl, "%s%s", jl ? "," : "", j->id);
		nrun++;
	}
	/* A change of disk_low (min_free) is written at once, like a change of jobs. */
	key = xasprintf("%zu:%s:%d", nrun, jobs, disk_ok);
	if (!bs.registered)
		mode[m++] = 's';
	else if (bs.jobs == NULL || strcmp(bs.jobs, key) != 0)
		mode[m++] = 'd';
	if (!bs.registered || bs.count % BEAT_REFRESH_EVERY == 0) {
		mode[m++] = 'e';
		mode[m++] = 'o';
	}
	bs.count++;
	if (m > 0) {
		struct beat_sent *s = xcalloc(1, sizeof *s);
		s->reg = !bs.registered;
		s->jobs = key;
		if (may_reap)
			mode[m++] = 'l';
		mode[m] = '\0';
		beat_script(mode, jobs, nrun, free_bytes, disk_ok, s);
	} else {
		const char *zadd[] = { "ZADD", wk->keys.workers, sc, wk->id };
		free(key);
		snprintf(sc, sizeof sc, "%.3f", now_real());
		rconn_send(wk->cmd, RQ_ONCE, beat_zadd_reply, NULL, 4, zadd, NULL);
		if (may_reap) {
			char px[24];
			const char *set[] = { "SET", wk->keys.reaper_lock, wk->id, "NX", "PX", px };
			snprintf(px, sizeof px, "%ld", (long)(wk->conf->reaper_interval * 1000));
			rconn_send(wk->cmd, RQ_ONCE, beat_lock_reply, NULL, 6, set, NULL);
		}
	}
	free(jobs);
}

/* The heartbeat timer. */
static void
beat_cb(EV_P_ ev_periodic *w, int revents)
{
	(void)loop;
	(void)w;
	(void)revents;
	beat_now();
}

/* Our slot on the beat grid: its offset in seconds, from a hash (FNV-1a) of our id. */
static double
beat_offset(double interval)
{
	unsigned long slots = (unsigned long)(interval / BEAT_GRID);
	uint32_t h = 2166136261u;

	if (slots <= 1)
		return 0;
	for (const char *p = wk->id; *p != '\0'; p++)
		h = (h ^ (unsigned char)*p) * 16777619u;
	return (double)(h % slots) * BEAT_GRID;
}

/* Start beating every heartbeat_interval, in our slot of the grid. */
void
beat_init(void)
{
	double interval = wk->conf->heartbeat_interval;

	ev_periodic_init(&beat_timer, beat_cb, beat_offset(interval), interval, NULL);
	ev_periodic_start(EV_DEFAULT, &beat_timer);
}

/* Stop beating (at exit: the release removes our heartbeat). */
void
beat_stop(void)
{
	ev_periodic_stop(EV_DEFAULT, &beat_timer);
}

struct release {
	void (*done)(bool ok);
};

/* The release script's answer: done(false) unless Redis carried it out. */
static void
beat_released(redisReply *r, void *arg)
{
	struct release *rel = arg;
	void (*done)(bool) = rel->done;
	bool ok = true;

	if (r == NULL)
		return;	/* only at exit; the process is going away */
	free(rel);
	if (r->type == REDIS_REPLY_ERROR) {
		log_err("release: %s", r->str);
		ok = false;
	} else if (r->type == REDIS_REPLY_INTEGER && r->integer > 0)
		log_notice("put %lld job%s back on the queue", r->integer, r->integer == 1 ? "" : "s");
	if (done != NULL)
		done(ok);
}

/* Put back what we do not hold (all of it when all is true, at exit). */
void
beat_release(bool all, void (*done)(bool ok))
{
	struct release *rel;
	char **held = NULL;
	size_t n = 0;
	struct job *j;

	if (!all) {
		/* What we hold, as "<length>:<sha1>": the payloads need not be sent. */
		TAILQ_FOREACH(j, &wk->jobs, entry)
			n++;
		held = xcalloc(n + 1, sizeof *held);
		n = 0;
		TAILQ_FOREACH(j, &wk->jobs, entry)
			held[n++] = xasprintf("%zu:%s", j->payload_len, j->payload_sha1);
	}
	rel = xmalloc(sizeof *rel);
	rel->done = done;
	script_release(&(struct script_release) {
	    .all = all, .now = now_real(), .held = (const char *const *)held, .nheld = n,
	}, beat_released, rel);
	for (size_t i = 0; i < n; i++)
		free(held[i]);
	free(held);
}

/* One container ps listed for a dead worker: checked again, then removed by id. */
struct orphan {
	char *worker;
	char *id;
	char *name;
};

/* Free an orphan entry. */
static void
beat_orphan_free(struct orphan *o)
{
	free(o->worker);
	free(o->id);
	free(o->name);
	free(o);
}

/*
 * The orphan's label, read again just before removing it.  Ids are
 * never reused, so once this still says the dead worker, rm -f of the id
 * can only hit that container: a sibling that restarted the requeued job
 * under the same name has a container of its own id.  A container gone
 * meanwhile (inspect fails) is skipped.
 */
static void
beat_orphan_inspected(int wstatus, const char *out, size_t len, void *arg)
{
	struct orphan *o = arg;
	struct strv argv = { 0 };
	size_t n = len;

	while (n > 0 && (out[n - 1] == '\n' || out[n - 1] == '\r' || out[n - 1] == ' '))
		n--;
	if (!WIFEXITED(wstatus) || WEXITSTATUS(wstatus) != 0) {
		log_info("orphans of %s: container %s (%.12s) is gone already", o->worker, o->name, o->id);
	} else if (n != strlen(o->worker) || memcmp(out, o->worker, n) != 0) {
		log_warn("orphans of %s: container %s (%.12s) is not that worker's (its label says "
		    "\"%.*s\"); leaving it", o->worker, o->name, o->id, (int)(n > 100 ? 100 : n), out);
	} else {
		log_notice("removing container %s of dead worker %s (id %.12s)", o->name, o->worker, o->id);
		sandbox_rm_argv(wk->conf, &wk->rt, o->id, &argv);
		proc_run(argv.v, NULL, NULL);
		strv_free(&argv);
	}
	beat_orphan_free(o);
}

/* What ps listed ("ID NAME WORKER" lines): check each of ours again, by id. */
static void
beat_orphans_listed(int wstatus, const char *out, size_t len, void *arg)
{
	char *w = arg, *dup, *line, *save, prefix[ID_MAX + 16];
	struct strv argv = { 0 };

	if (!WIFEXITED(wstatus) || WEXITSTATUS(wstatus) != 0) {
		log_warn("orphans of %s: listing containers failed", w);
		free(w);
		return;
	}
	sandbox_name(wk->conf->namespace, "", prefix, sizeof prefix);
	dup = xstrndup(out, len);
	for (line = strtok_r(dup, "\n", &save); line != NULL; line = strtok_r(NULL, "\n", &save)) {
		char *id, *name, *label, *fs;
		struct orphan *o;

		id = strtok_r(line, " \t\r", &fs);
		name = id ? strtok_r(NULL, " \t\r", &fs) : NULL;
		label = name ? strtok_r(NULL, " \t\r", &fs) : NULL;
		if (label == NULL || strcmp(label, w) != 0 || strncmp(name, prefix, strlen(prefix)) != 0)
			continue;	/* only our builds, and only the dead worker's */
		if (strspn(id, "0123456789abcdef") != strlen(id) || strlen(id) < 12)
			continue;	/* not an id: never hand the runtime a name here */
		o = xcalloc(1, sizeof *o);
		o->worker = xstrdup(w);
		o->id = xstrdup(id);
		o->name = xstrdup(name);
		sandbox_inspect_worker_argv(wk->conf, &wk->rt, o->id, &argv);
		proc_run(argv.v, beat_orphan_inspected, o);
	}
	strv_free(&argv);
	free(dup);
	free(w);
}

/* Remove the containers a dead worker left on this host. */
void
beat_sweep_orphans(const char *worker_id)
{
	struct strv argv = { 0 };
	char label[ID_MAX + 128];

	if (wk->rt.kind == RT_EXEC)
		return;
	snprintf(label, sizeof label, "debate.worker=%s", worker_id);
	sandbox_ps_argv(wk->conf, &wk->rt, label, &argv);
	proc_run(argv.v, beat_orphans_listed, xstrdup(worker_id));
	strv_free(&argv);
}
