/*
 * submit.c: enqueue submit.
 *
 * The job is built with payload_encode() and then put through payload_decode()
 * against the same worker.ini, so a job the worker would refuse is
 * refused here first, with the worker's own message, before anything
 * reaches Redis.  Then shared/lua/submit.lua marks it queued with the
 * payload's digest and pushes it, refusing an id already known (--rerun:
 * one that finished).  --wait blocks for the result and exits by its
 * status; --follow prints the events as they come.
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "enqueue.h"
#include "enqueue_lua.h"


enum {
	O_PROFILE = 1, O_OUTPUT, O_ID, O_MEMORY, O_CPUS, O_TIMEOUT, O_WARNING, O_IMAGE, O_EPOCH,
	O_RETRIES, O_META, O_WAIT, O_WAIT_TIMEOUT, O_FOLLOW, O_RERUN, O_PROFILE_DIR, O_UPLOAD, O_UPLOAD_HEADER,
};

static const struct opt submit_opts[] = {
	{ "profile", 0, true, O_PROFILE }, { "output", 0, true, O_OUTPUT }, { "id", 0, true, O_ID },
	{ "memory", 0, true, O_MEMORY }, { "cpus", 0, true, O_CPUS }, { "timeout", 0, true, O_TIMEOUT },
	{ "warning", 0, true, O_WARNING }, { "image", 0, true, O_IMAGE }, { "epoch", 0, true, O_EPOCH },
	{ "retries", 0, true, O_RETRIES }, { "meta", 0, true, O_META }, { "wait", 0, false, O_WAIT },
	{ "wait-timeout", 0, true, O_WAIT_TIMEOUT }, { "follow", 0, false, O_FOLLOW },
	{ "rerun", 0, false, O_RERUN }, { "profile-dir", 0, true, O_PROFILE_DIR },
	{ "upload", 0, true, O_UPLOAD }, { "upload-header", 0, true, O_UPLOAD_HEADER },
	{ NULL, 0, false, 0 },
};

static int submit_wait(const char *id, double timeout);

struct submit_args {
	const char *profile, *output, *id, *memory, *cpus, *timeout, *warning, *image, *epoch,
	    *retries, *profile_dir, *upload;
	struct strv meta;	/* "KEY=VALUE" each */
	struct strv headers;	/* "Name: value" each; "Name: env:VAR" reads $VAR */
	bool wait, follow, rerun;
	double wait_timeout;
};

/* A fresh id: UTC date and time and 32 random bits. */
static void
submit_make_id(char *buf, size_t len)
{
	unsigned char rnd[4];
	struct tm tm;
	time_t t = time(NULL);
	char date[32];

	if (getrandom(rnd, sizeof rnd, 0) != (ssize_t)sizeof rnd) {
		uint32_t v = (uint32_t)getpid() ^ (uint32_t)(now_real() * 1e6);
		memcpy(rnd, &v, sizeof rnd);
	}
	gmtime_r(&t, &tm);
	strftime(date, sizeof date, "%Y%m%d-%H%M%S", &tm);
	snprintf(buf, len, "%s-%02x%02x%02x%02x", date, rnd[0], rnd[1], rnd[2], rnd[3]);
}

/* DIR relative to builds_root: as given, or made relative when absolute. */
static char *
submit_path(const char *opt, const char *dir)
{
	const char *root = en->conf.builds_root, *rest;
	size_t rl = strlen(root);

	if (dir == NULL)
		enq_usage("submit", "--%s DIR is required", opt);
	if (dir[0] != '/')
		return xstrdup(dir);
	while (rl > 1 && root[rl - 1] == '/')
		rl--;
	if (strncmp(dir, root, rl) != 0 || dir[rl] != '/')
		enq_die(EXIT_USAGE, "--%s: %s is not below builds_root %.*s (worker.ini [worker] builds_root)",
		    opt, dir, (int)rl, root);
	for (rest = dir + rl; *rest == '/'; rest++)
		;
	if (*rest == '\0')
		enq_die(EXIT_USAGE, "--%s: %s is builds_root itself, not a directory below it", opt, dir);
	return xstrdup(rest);
}

/* A finite number for --cpus. */
static double
submit_number(const char *opt, const char *s)
{
	char *end;
	double v;

	errno = 0;
	v = strtod(s, &end);
	if (*s == '\0' || *end != '\0' || errno != 0 || !isfinite(v))
		enq_die(EXIT_USAGE, "--%s: \"%s\" is not a number", opt, s);
	return v;
}

/* The --meta pairs as a msgpack map of strings (a later KEY wins). */
static void
submit_meta(const struct strv *meta, struct job_spec *js)
{
	msgpack_sbuffer sb;
	msgpack_packer pk;
	size_t n = 0;

	for (size_t i = 0; i < meta->n; i++) {
		const char *eq = strchr(meta->v[i], '=');
		if (eq == NULL || eq == meta->v[i])
			enq_die(EXIT_USAGE, "--meta: \"%s\" is not KEY=VALUE", meta->v[i]);
	}
	msgpack_sbuffer_init(&sb);
	msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
	for (size_t pass = 0; pass < 2; pass++) {
		if (pass == 1)
			msgpack_pack_map(&pk, n);
		for (size_t i = 0; i < meta->n; i++) {
			const char *kv = meta->v[i];
			size_t kl = (size_t)(strchr(kv, '=') - kv);
			bool later = false;
			for (size_t j = i + 1; j < meta->n && !later; j++)
				later = strncmp(meta->v[j], kv, kl + 1) == 0;
			if (later)
				continue;
			if (pass == 0)
				n++;
			else {
				mp_strn(&pk, kv, kl);
				mp_str(&pk, kv + kl + 1);
			}
		}
	}
	js->meta = sb.data;
	js->meta_len = sb.size;
}

/*
 * --upload URL and its --upload-header "Name: value" options.  A value
 * "env:VAR" is read from the environment, so a credential need not be
 * on the command line.
 */
static void
submit_upload(const struct submit_args *a, struct job_spec *js)
{
	js->upload_url = xstrdup(a->upload);
	for (size_t i = 0; i < a->headers.n; i++) {
		const char *h = a->headers.v[i], *colon = strchr(h, ':'), *val;
		char *line;
		if (colon == NULL || colon == h)
			enq_die(EXIT_USAGE, "--upload-header: \"%.40s\" is not \"Name: value\"", h);
		val = colon + 1;
		while (*val == ' ')
			val++;
		if (strncmp(val, "env:", 4) == 0 && (val = getenv(val + 4)) == NULL)
			enq_die(EXIT_USAGE, "--upload-header %.*s: $%s is not set", (int)(colon - h), h, colon + 1 +
			    strspn(colon + 1, " ") + 4);
		line = xasprintf("%.*s: %s", (int)(colon - h), h, val);
		strv_push(&js->upload_headers, line);
		free(line);
	}
}

/* Fill js from the options; every bad value exits 2 naming its option. */
static void
submit_spec(const struct submit_args *a, struct job_spec *js)
{
	const struct config *c = &en->conf;
	char err[ERR_MAX];
	long long v;

	memset(js, 0, sizeof *js);
	if (a->id != NULL) {
		if (!id_valid(a->id, strlen(a->id)))
			enq_die(EXIT_USAGE, "--id: \"%.80s\" is not valid: it must match "
			    "[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", a->id);
		snprintf(js->id, sizeof js->id, "%s", a->id);
	} else
		submit_make_id(js->id, sizeof js->id);
	if (a->profile_dir != NULL) {
		if (pack_dir(a->profile_dir, &js->profile_archive, &js->profile_archive_len, err, sizeof err) != 0)
			enq_die(EXIT_USAGE, "%s", err);
	} else
		js->profile = submit_path("profile", a->profile);
	if (a->output != NULL)
		js->output = submit_path("output", a->output);
	if (a->upload != NULL)
		submit_upload(a, js);
	js->memory = c->memory;
	if (a->memory != NULL && parse_size(a->memory, &js->memory, err, sizeof err) != 0)
		enq_die(EXIT_USAGE, "--memory: %s", err);
	js->cpus = a->cpus ? submit_number("cpus", a->cpus) : c->cpus;
	js->timeout = c->timeout;
	if (a->timeout != NULL && parse_seconds(a->timeout, &js->timeout, err, sizeof err) != 0)
		enq_die(EXIT_USAGE, "--timeout: %s", err);
	js->warning = c->warning < js->timeout ? c->warning : js->timeout * 0.75;
	if (a->warning != NULL && parse_seconds(a->warning, &js->warning, err, sizeof err) != 0)
		enq_die(EXIT_USAGE, "--warning: %s", err);
	if (a->image != NULL)
		js->image = xstrdup(a->image);
	js->has_epoch = true;
	js->source_date_epoch = (int64_t)time(NULL);
	if (a->epoch != NULL) {
		if (parse_int(a->epoch, 0, EPOCH_MAX, &v, err, sizeof err) != 0)
			enq_die(EXIT_USAGE, "--epoch: %s", err);
		js->source_date_epoch = v;
	}
	if (a->retries != NULL) {
		if (parse_int(a->retries, 0, 1000000, &v, err, sizeof err) != 0)
			enq_die(EXIT_USAGE, "--retries: %s", err);
		js->retries = (long)v;
	}
	if (a->meta.n > 0)
		submit_meta(&a->meta, js);
}

/* Tell about a profile missing on this host, when builds_root is here. */
static void
submit_check_local(const struct job_spec *js)
{
	char real[4096], err[ERR_MAX];
	struct stat st;

	if (js->profile == NULL || stat(en->conf.builds_root, &st) != 0 || !S_ISDIR(st.st_mode))
		return;		/* the workers' builds_root is not on this host */
	if (path_resolve(en->conf.builds_root, js->profile, false, real, sizeof real, err, sizeof err) != 0)
		enq_warn("profile %s (checked on this host)", err);
}

/*
 * Queue the payload through shared/lua/submit.lua, the producers' one
 * script: a new id only, or with --rerun a finished job again.  The
 * script binds the payload's digest to the job hash; a second payload
 * with the id would be dead-lettered by the worker (duplicate_id).
 */
static void
submit_push(const char *id, const msgpack_sbuffer *job, double enqueued_at, bool rerun)
{
	char kjob[KEY_MAX], kres[KEY_MAX], klog[KEY_MAX], ts[32], verdict[16] = "", state[32] = "";
	const char *argv[10];
	size_t lens[10];
	redisReply *r;

	snprintf(ts, sizeof ts, "%.6f", enqueued_at);
	argv[0] = "EVAL";
	argv[1] = lua_submit;
	argv[2] = "4";
	argv[3] = keys_id(&en->keys, "job", id, kjob, sizeof kjob);
	argv[4] = en->keys.queue;
	argv[5] = keys_id(&en->keys, "result", id, kres, sizeof kres);
	argv[6] = keys_id(&en->keys, "log", id, klog, sizeof klog);
	argv[7] = job->data;
	argv[8] = ts;
	argv[9] = rerun ? "rerun" : "new";
	for (int i = 0; i < 10; i++)
		lens[i] = i == 7 ? job->size : strlen(argv[i]);
	r = redis_command(en->rc, 10, argv, lens);
	if (r->type == REDIS_REPLY_ARRAY && r->elements == 2 && r->element[0]->type == REDIS_REPLY_STRING &&
	    r->element[1]->type == REDIS_REPLY_STRING) {
		snprintf(verdict, sizeof verdict, "%s", r->element[0]->str);
		snprintf(state, sizeof state, "%s", r->element[1]->str);
	}
	freeReplyObject(r);
	if (strcmp(verdict, "ok") == 0)
		return;
	if (strcmp(verdict, "exists") == 0)
		enq_die(EXIT_USAGE, "job %s is already %s: pick another --id%s", id, state,
		    strcmp(state, "queued") == 0 || strcmp(state, "running") == 0 ? " (or cancel it first)" :
		    ", or run it again with --rerun");
	if (strcmp(verdict, "busy") == 0)
		enq_die(EXIT_USAGE, "job %s is already %s: --rerun waits for it to finish (or cancel it first)",
		    id, state);
	enq_die(EXIT_REDIS, "job %s: unexpected answer from submit.lua", id);
}

/* Parse submit's options. */
static void
submit_parse(int argc, char **argv, struct submit_args *a)
{
	struct opt_state st;
	const char *arg;
	char err[ERR_MAX];
	int id;

	opt_init(&st, argc, argv, "submit");
	while ((id = opt_next(&st, submit_opts, &arg)) != OPT_END) {
		switch (id) {
		case OPT_ARG: enq_usage("submit", "unexpected argument \"%s\"", arg);
		case O_PROFILE: a->profile = arg; break;
		case O_OUTPUT: a->output = arg; break;
		case O_ID: a->id = arg; break;
		case O_MEMORY: a->memory = arg; break;
		case O_CPUS: a->cpus = arg; break;
		case O_TIMEOUT: a->timeout = arg; break;
		case O_WARNING: a->warning = arg; break;
		case O_IMAGE: a->image = arg; break;
		case O_EPOCH: a->epoch = arg; break;
		case O_RETRIES: a->retries = arg; break;
		case O_META: strv_push(&a->meta, arg); break;
		case O_WAIT: a->wait = true; break;
		case O_FOLLOW: a->follow = true; break;
		case O_RERUN: a->rerun = true; break;
		case O_PROFILE_DIR: a->profile_dir = arg; break;
		case O_UPLOAD: a->upload = arg; break;
		case O_UPLOAD_HEADER: strv_push(&a->headers, arg); break;
		case O_WAIT_TIMEOUT:
			if (parse_seconds(arg, &a->wait_timeout, err, sizeof err) != 0)
				enq_die(EXIT_USAGE, "--wait-timeout: %s", err);
			break;
		}
	}
	if (a->profile != NULL && a->profile_dir != NULL)
		enq_usage("submit", "give only one of --profile and --profile-dir");
	if (a->profile == NULL && a->profile_dir == NULL)
		enq_usage("submit", "one of --profile DIR (on the workers) and --profile-dir DIR (packed from here) "
		    "is required");
	if (a->output == NULL && a->upload == NULL)
		enq_usage("submit", "--output DIR is required (unless --upload URL is given)");
	if (a->headers.n > 0 && a->upload == NULL)
		enq_usage("submit", "--upload-header needs --upload URL");
}

/* enqueue submit */
int
submit_main(int argc, char **argv)
{
	struct submit_args a = { 0 };
	struct job_spec js, check;
	msgpack_sbuffer job;
	enum refusal why;
	char err[ERR_MAX], id[ID_MAX + 1];
	double now = now_real();
	int rc = EXIT_OK;

	submit_parse(argc, argv, &a);
	enq_setup(false);
	submit_spec(&a, &js);
	strv_free(&a.meta);
	strv_free(&a.headers);
	/* Limits not given are left out, so the worker's own defaults apply. */
	js.omit = (a.memory ? 0 : JOB_OMIT_MEMORY) | (a.cpus ? 0 : JOB_OMIT_CPUS) |
	    (a.timeout ? 0 : JOB_OMIT_TIMEOUT) | (a.warning ? 0 : JOB_OMIT_WARNING);
	js.enqueued_at = now;
	msgpack_sbuffer_init(&job);
	payload_encode(&js, &job);
	why = payload_decode(job.data, job.size, &en->conf, &check, err, sizeof err);
	payload_free(&check);
	if (why != REFUSE_NONE)
		enq_die(EXIT_USAGE, "the worker would refuse this job (%s): %s", refusal_name(why), err);
	submit_check_local(&js);
	snprintf(id, sizeof id, "%s", js.id);
	payload_free(&js);

	en->rc = redis_connect(&en->conf);
	submit_push(id, &job, now, a.rerun);
	msgpack_sbuffer_destroy(&job);
	if (!en->json) {
		printf("%s\n", id);
		print_flush();
	} else if (!a.wait && !a.follow) {
		struct jbuf jb;
		print_json_begin(&jb);
		msgpack_pack_map(&jb.pk, 1);
		print_json_kv_str(&jb, "id", id);
		print_json_end(&jb);
	}
	if (a.follow)
		rc = watch_job(id, a.wait_timeout);
	else if (a.wait)
		rc = submit_wait(id, a.wait_timeout);
	return rc;
}

/* A dead job has no result: say so the way a result would. */
static int
submit_dead(const char *id, const char *error)
{
	if (en->json) {
		struct jbuf jb;
		print_json_begin(&jb);
		msgpack_pack_map(&jb.pk, 3);
		print_json_kv_str(&jb, "id", id);
		print_json_kv_str(&jb, "status", "dead");
		print_json_kv_str(&jb, "error", error ? error : "");
		print_json_end(&jb);
	} else
		printf("job %s: %sdead%s\n  error       %s\n", id, print_sgr("1;31"), print_sgr("0"),
		    error ? error : "");
	print_flush();
	return EXIT_DEAD;
}

/*
 * Wait for the job's result.  BLMOVE from the result list to itself
 * leaves the result in place for `enqueue status` and other waiters.
 * The loop wakes each second for Ctrl-C, the timeout and a dead job.
 */
static int
submit_wait(const char *id, double timeout)
{
	char kres[KEY_MAX], kjob[KEY_MAX];
	double deadline = timeout > 0 ? now_mono() + timeout : 0;
	msgpack_unpacked u;
	redisReply *r;
	int rc;

	keys_id(&en->keys, "result", id, kres, sizeof kres);
	keys_id(&en->keys, "job", id, kjob, sizeof kjob);
	enq_catch_signals();
	for (;;) {
		if (enq_interrupted)
			enq_die(EXIT_INTERRUPTED, "interrupted; job %s goes on (enqueue status %s)", id, id);
		r = redis_commandv(en->rc, "BLMOVE", kres, kres, "RIGHT", "LEFT", "1");
		if (r->type == REDIS_REPLY_STRING)
			break;
		freeReplyObject(r);
		r = redis_commandv(en->rc, "HMGET", kjob, "state", "error");
		if (r->elements == 2 && r->element[0]->type == REDIS_REPLY_STRING &&
		    strcmp(r->element[0]->str, "dead") == 0) {
			const redisReply *e = r->element[1];
			rc = submit_dead(id, e->type == REDIS_REPLY_STRING ? e->str : NULL);
			freeReplyObject(r);
			return rc;
		}
		freeReplyObject(r);
		if (deadline > 0 && now_mono() >= deadline)
			enq_die(EXIT_REDIS, "gave up waiting for job %s after %gs (it goes on)", id, timeout);
	}
	msgpack_unpacked_init(&u);
	if (!print_unpack(r->str, r->len, &u)) {
		freeReplyObject(r);
		msgpack_unpacked_destroy(&u);
		enq_die(EXIT_ERROR, "the result of job %s is not valid msgpack", id);
	}
	freeReplyObject(r);
	{
		char status[32] = "";
		mp_get_str(&u.data, "status", status, sizeof status);
		print_result(&u.data, en->json);
		rc = print_status_exit(status);
	}
	msgpack_unpacked_destroy(&u);
	return rc;
}
