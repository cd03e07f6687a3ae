/*
 * workers.c: the workers, read from {ns}:workers (id -> last beat) and each
 * heartbeat hash {ns}:worker:<id>, with the jobs they run; `enqueue
 * workers` prints them and `enqueue top` shows them live.  A worker
 * whose score (its last beat) is older than heartbeat_ttl, or whose hash
 * is gone, missed its heartbeat: lost (the reaper will move its jobs back
 * to the queue).  The hash outlives the beats (PROTOCOL.md): the score
 * decides.
 */
#include <stdlib.h>
#include <string.h>

#include "enqueue.h"

/* A number field of a hash reply (0 when absent). */
static double
workers_num(const redisReply *h, const char *field)
{
	const char *v = redis_field(h, field);

	return v ? strtod(v, NULL) : 0;
}

/* Each running job's timeout, from the payloads in the worker's active list. */
static void
workers_timeouts(redisContext *ctx, struct workers_entry *w)
{
	char key[KEY_MAX], id[ID_MAX + 1];
	msgpack_unpacked u;
	redisReply *r;

	for (size_t j = 0; j < w->njobs; j++)
		w->jobs[j].timeout = en->conf.timeout;	/* the default, unless the job says */
	keys_id(&en->keys, "active", w->id, key, sizeof key);
	r = redis_commandv(ctx, "LRANGE", key, "0", "-1");
	msgpack_unpacked_init(&u);
	for (size_t i = 0; i < r->elements; i++) {
		const redisReply *e = r->element[i];
		double t;
		if (e->type != REDIS_REPLY_STRING || !print_unpack(e->str, e->len, &u) ||
		    !mp_get_str(&u.data, "id", id, sizeof id) || !mp_get_num(&u.data, "timeout", &t))
			continue;
		for (size_t j = 0; j < w->njobs; j++)
			if (strcmp(w->jobs[j].id, id) == 0)
				w->jobs[j].timeout = t;
	}
	msgpack_unpacked_destroy(&u);
	freeReplyObject(r);
}

/* The jobs a worker's heartbeat names, with their hash's state. */
static void
workers_jobs(redisContext *ctx, struct workers_entry *w, const char *list)
{
	struct strv ids = { 0 };
	char key[KEY_MAX];

	strv_split(&ids, list, ",");
	w->jobs = xcalloc(ids.n, sizeof *w->jobs);
	for (size_t i = 0; i < ids.n; i++) {
		struct workers_job *j;
		redisReply *r;
		if (!id_valid(ids.v[i], strlen(ids.v[i])))
			continue;
		j = &w->jobs[w->njobs++];
		snprintf(j->id, sizeof j->id, "%s", ids.v[i]);
		keys_id(&en->keys, "job", j->id, key, sizeof key);
		r = redis_commandv(ctx, "HMGET", key, "state", "phase", "started_at");
		if (r->elements == 3) {
			if (r->element[0]->type == REDIS_REPLY_STRING)
				snprintf(j->state, sizeof j->state, "%s", r->element[0]->str);
			if (r->element[1]->type == REDIS_REPLY_STRING)
				snprintf(j->phase, sizeof j->phase, "%s", r->element[1]->str);
			if (r->element[2]->type == REDIS_REPLY_STRING)
				j->started_at = strtod(r->element[2]->str, NULL);
		}
		freeReplyObject(r);
	}
	strv_free(&ids);
}

/* Read every worker in {ns}:workers. */
void
workers_load(redisContext *ctx, struct workers *f, bool timeouts)
{
	char key[KEY_MAX];
	redisReply *z;

	memset(f, 0, sizeof *f);
	z = redis_commandv(ctx, "ZRANGE", en->keys.workers, "0", "-1", "WITHSCORES");
	f->w = xcalloc(z->elements / 2, sizeof *f->w);
	for (size_t i = 0; i + 1 < z->elements; i += 2) {
		struct workers_entry *w = &f->w[f->n++];
		const char *v;
		redisReply *h;

		w->id = xstrdup(z->element[i]->str);
		w->score = strtod(z->element[i + 1]->str, NULL);
		h = redis_commandv(ctx, "HGETALL", keys_id(&en->keys, "worker", w->id, key, sizeof key));
		if (h->elements == 0 || now_real() - w->score > en->conf.heartbeat_ttl) {
			w->lost = true;
			freeReplyObject(h);
			continue;
		}
		w->host = xstrdup((v = redis_field(h, "host")) ? v : "?");
		w->version = xstrdup((v = redis_field(h, "version")) ? v : "?");
		w->pid = (long)workers_num(h, "pid");
		w->started_at = workers_num(h, "started_at");
		w->beat = w->score;	/* the hash's `beat` is only its last write */
		w->concurrency = (long)workers_num(h, "concurrency");
		w->running = (long)workers_num(h, "running");
		w->disk_free = workers_num(h, "disk_free");
		w->disk_low = (v = redis_field(h, "disk_low")) != NULL && strcmp(v, "1") == 0;
		workers_jobs(ctx, w, (v = redis_field(h, "jobs")) ? v : "");
		freeReplyObject(h);
		if (timeouts && w->njobs > 0)
			workers_timeouts(ctx, w);
	}
	freeReplyObject(z);
}

/* Free what workers_load() read. */
void
workers_free(struct workers *f)
{
	for (size_t i = 0; i < f->n; i++) {
		free(f->w[i].id);
		free(f->w[i].host);
		free(f->w[i].version);
		free(f->w[i].jobs);
	}
	free(f->w);
	memset(f, 0, sizeof *f);
}

/* The fleet as JSON. */
static void
workers_json(const struct workers *f, double now)
{
	struct jbuf jb;

	print_json_begin(&jb);
	msgpack_pack_map(&jb.pk, 1);
	mp_str(&jb.pk, "workers");
	msgpack_pack_array(&jb.pk, f->n);
	for (size_t i = 0; i < f->n; i++) {
		const struct workers_entry *w = &f->w[i];
		msgpack_pack_map(&jb.pk, w->lost ? 3 : 14);
		print_json_kv_str(&jb, "id", w->id);
		mp_kv_bool(&jb.pk, "lost", w->lost);
		mp_kv_double(&jb.pk, "last_beat", w->score);
		if (w->lost)
			continue;
		print_json_kv_str(&jb, "host", w->host);
		mp_kv_int(&jb.pk, "pid", w->pid);
		print_json_kv_str(&jb, "version", w->version);
		mp_kv_double(&jb.pk, "started_at", w->started_at);
		mp_kv_double(&jb.pk, "uptime", w->started_at > 0 ? now - w->started_at : 0);
		mp_kv_int(&jb.pk, "concurrency", w->concurrency);
		mp_kv_int(&jb.pk, "running", w->running);
		mp_kv_int(&jb.pk, "free", w->concurrency > w->running ? w->concurrency - w->running : 0);
		mp_kv_uint(&jb.pk, "disk_free", (uint64_t)w->disk_free);
		mp_kv_bool(&jb.pk, "disk_low", w->disk_low);
		mp_str(&jb.pk, "jobs");
		msgpack_pack_array(&jb.pk, w->njobs);
		for (size_t j = 0; j < w->njobs; j++) {
			const struct workers_job *fj = &w->jobs[j];
			msgpack_pack_map(&jb.pk, 5);
			print_json_kv_str(&jb, "id", fj->id);
			print_json_kv_str(&jb, "state", fj->state[0] ? fj->state : NULL);
			print_json_kv_str(&jb, "phase", fj->phase[0] ? fj->phase : NULL);
			mp_kv_double(&jb.pk, "started_at", fj->started_at);
			mp_kv_double(&jb.pk, "elapsed", fj->started_at > 0 ? now - fj->started_at : 0);
		}
	}
	print_json_end(&jb);
}

/* enqueue workers */
int
workers_main(int argc, char **argv)
{
	static const struct opt none[] = { { NULL, 0, false, 0 } };
	struct opt_state st;
	struct workers f;
	const char *arg;
	char up[32], el[32], beat[32], slots[32];
	double now;

	opt_init(&st, argc, argv, "workers");
	if (opt_next(&st, none, &arg) != OPT_END)
		enq_usage("workers", "unexpected argument \"%s\"", arg);
	enq_setup(true);
	workers_load(en->rc, &f, false);
	now = now_real();
	if (en->json)
		workers_json(&f, now);
	else if (f.n == 0)
		printf("no workers\n");
	else
		printf("%-28s %-16s %-8s %-5s %-8s %s\n", "WORKER", "HOST", "UPTIME", "JOBS", "VERSION",
		    "LAST BEAT");
	for (size_t i = 0; !en->json && i < f.n; i++) {
		const struct workers_entry *w = &f.w[i];
		print_duration(now - w->score, beat, sizeof beat);
		if (w->lost) {
			printf("%-28s %-16s %-8s %-5s %-8s %s ago %s(lost)%s\n", print_safe(w->id), "-", "-", "-", "-",
			    beat, print_sgr("1;31"), print_sgr("0"));
			continue;
		}
		snprintf(slots, sizeof slots, "%ld/%ld", w->running, w->concurrency);
		printf("%-28s %-16s %-8s %-5s %-8s %s ago", print_safe(w->id), print_safe(w->host),
		    print_duration(now - w->started_at, up, sizeof up), slots, print_safe(w->version), beat);
		if (w->disk_low) {
			char b[32];
			printf(" %s(disk low: %s free, below min_free; takes no job)%s", print_sgr("1;33"),
			    fmt_bytes((uint64_t)w->disk_free, b, sizeof b), print_sgr("0"));
		}
		printf("\n");
		for (size_t j = 0; j < w->njobs; j++) {
			const struct workers_job *fj = &w->jobs[j];
			const char *what = fj->phase[0] ? fj->phase : (fj->state[0] ? fj->state : "-");
			printf("  %-26s %-16s %s\n", fj->id, what,
			    fj->started_at > 0 ? print_duration(now - fj->started_at, el, sizeof el) : "-");
		}
	}
	workers_free(&f);
	print_flush();
	return EXIT_OK;
}
