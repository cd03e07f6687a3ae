/*
 * main.c: the worker process: options, configuration, signals, start-up
 * checks, the loop, and a clean exit.
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "job.h"

struct worker *wk;
static struct worker worker_storage;
static struct config worker_conf;
static ev_signal sig_term, sig_int, sig_hup;
static ev_timer drain_timer, watchdog_timer;
static bool exit_started, ready_sent;
static int exit_code;

/* --help. */
static void
usage(FILE *f)
{
	fprintf(f,
	    "usage: worker [-c FILE] [--redis URL] [--id NAME] [--concurrency N] [--once] [-v] [-n]\n"
	    "\n"
	    "Takes ISO build jobs from Redis and runs each in a container.\n"
	    "\n"
	    "  -c, --config FILE     worker.ini (default ./worker.ini, then /etc/debate/worker.ini)\n"
	    "      --redis URL       redis://[:password@]host:port/db, unix:///path, or\n"
	    "                        sentinel://host:port[,host:port]/master (also REDIS_URL)\n"
	    "      --id NAME         worker id (default hostname-pid); must be unique\n"
	    "      --concurrency N   builds at once (default [worker] concurrency)\n"
	    "      --once            run one job, then exit\n"
	    "  -v, --verbose         log debug messages\n"
	    "  -n, --check           check the configuration and exit\n"
	    "  -h, --help            this text\n"
	    "  -V, --version         the version\n"
	    "\n"
	    "Signals: TERM drains (no new jobs, running ones finish within drain_timeout),\n"
	    "a second TERM or INT stops at once; jobs not finished go back on the queue.\n"
	    "HUP reloads limits and the log level.  See worker(8) and worker.ini(5).\n");
}

/* Exit the loop: everything is released or given up (the reaper requeues what is left). */
static void
worker_exit_now(bool ok)
{
	(void)ok;
	ev_break(EV_DEFAULT, EVBREAK_ALL);
}

/* A slot is free: ask for a job. */
static void
worker_slot_freed(void)
{
	fetch_kick();
}

/*
 * Exit once nothing is left: draining (or --once done) and no job in any
 * state.  The payloads still in our active list then go back to the queue
 * and our heartbeat is removed, in one script; we exit when Redis says so.
 */
static void
worker_check_exit(void)
{
	if (wk->once && wk->done > 0)
		wk->draining = true;
	if (!wk->draining || !TAILQ_EMPTY(&wk->jobs) || exit_started)
		return;
	exit_started = true;
	notify_send("STOPPING=1\nSTATUS=releasing held jobs");
	fetch_stop();
	beat_stop();
	ev_timer_stop(EV_DEFAULT, &drain_timer);
	log_info("no jobs left; releasing and exiting");
	beat_release(true, worker_exit_now);
}

/* Stop every running build; they go back on the queue. */
static void
worker_stop_all(void)
{
	struct job *j;

	/* job_stop() never removes a job from the list, so plain iteration is safe. */
	wk->stopping = true;
	TAILQ_FOREACH(j, &wk->jobs, entry) {
		if (j->state == JOB_RUNNING || j->state == JOB_UPLOADING)
			job_stop(j, STOP_DRAIN);
	}
	worker_check_exit();
}

/* drain_timeout passed: stop what still runs. */
static void
drain_timer_cb(EV_P_ ev_timer *w, int revents)
{
	(void)loop;
	(void)w;
	(void)revents;
	log_notice("drain timeout (%g s): stopping running builds; they go back on the queue",
	    wk->conf->drain_timeout);
	worker_stop_all();
}

/* SIGTERM: drain; again (or SIGINT): stop now; a third time: exit at once. */
static void
sig_stop_cb(EV_P_ ev_signal *w, int revents)
{
	(void)revents;
	if (exit_started && wk->stopping) {
		log_warn("signal %d again while releasing: exiting now (held jobs go back via the reaper)",
		    w->signum);
		exit_code = 1;
		ev_break(loop, EVBREAK_ALL);
		return;
	}
	if (!wk->draining && w->signum == SIGTERM) {
		log_notice("SIGTERM: draining: no new jobs; running builds get %g s to finish",
		    wk->conf->drain_timeout);
		notify_send("STOPPING=1\nSTATUS=draining");
		wk->draining = true;
		fetch_stop();
		ev_timer_set(&drain_timer, wk->conf->drain_timeout, 0);
		ev_timer_start(loop, &drain_timer);
		worker_check_exit();
		return;
	}
	log_notice("signal %d: stopping running builds now; they go back on the queue", w->signum);
	wk->draining = true;
	fetch_stop();
	worker_stop_all();
}

/*
 * SIGHUP: read worker.ini again into a fresh struct and swap it in only
 * when it is valid.  What needs a restart (Redis, namespace, runtime,
 * builds_root) keeps its old value and we say so.
 */
static void
sig_hup_cb(EV_P_ ev_signal *w, int revents)
{
	struct config fresh, old;
	char err[ERR_MAX];

	(void)loop;
	(void)w;
	(void)revents;
	if (wk->conf->path == NULL) {
		log_warn("SIGHUP: no config file to reload");
		return;
	}
	config_defaults(&fresh);
	if (config_load(wk->conf->path, &fresh, err, sizeof err) != 0 || config_check(&fresh, err, sizeof err) != 0) {
		log_err("SIGHUP: %s; keeping the running configuration", err);
		config_free(&fresh);
		return;
	}
#define KEEP(f)                                                                \
	do {                                                                   \
		if ((fresh.f == NULL) != (wk->conf->f == NULL) ||              \
		    (fresh.f && strcmp(fresh.f, wk->conf->f) != 0))            \
			log_warn("SIGHUP: %s changes only with a restart", #f); \
		char *t = fresh.f;                                             \
		fresh.f = wk->conf->f;                                         \
		wk->conf->f = t;                                               \
	} while (0)
	KEEP(redis_url);
	KEEP(namespace);
	KEEP(runtime);
	KEEP(builds_root);
	KEEP(metrics_listen);
#undef KEEP
	/* Keep the command-line overrides of the running process. */
	fresh.concurrency = wk->slots;
	old = *wk->conf;
	*wk->conf = fresh;
	config_free(&old);
	log_set_level(wk->conf->log_level);
	log_notice("SIGHUP: configuration reloaded from %s", wk->conf->path);
	fetch_kick();
}

/* The command connection is up: beat, fetch, and tell systemd we are ready. */
static void
cmd_up(struct rconn *rc)
{
	(void)rc;
	beat_now();
	fetch_kick();
	if (!ready_sent) {
		ready_sent = true;
		notify_send("READY=1\nSTATUS=running, %ld slots", wk->slots);
	}
}

/* Ping systemd's watchdog from the loop, so a stuck loop gets us restarted. */
static void
watchdog_cb(EV_P_ ev_timer *w, int revents)
{
	long running = 0;
	struct job *j;

	(void)loop;
	(void)w;
	(void)revents;
	TAILQ_FOREACH(j, &wk->jobs, entry)
		running += j->state == JOB_RUNNING || j->state == JOB_STOPPING;
	notify_send("WATCHDOG=1\nSTATUS=%s%ld running, %ld slots, redis %s", wk->draining ? "draining, " : "",
	    running, wk->slots, rconn_up(wk->cmd) ? "up" : "down");
}

/* Remove containers an earlier life with our id left (start-up: may block). */
static void
worker_sweep_own(void)
{
	struct strv argv = { 0 };
	char label[ID_MAX + 128], prefix[ID_MAX + 16], *out = NULL, *line, *save;
	int st;

	if (wk->rt.kind == RT_EXEC)
		return;
	snprintf(label, sizeof label, "debate.worker=%s", wk->id);
	sandbox_ps_argv(wk->conf, &wk->rt, label, &argv);
	st = proc_run_sync(argv.v, &out, 65536);
	sandbox_name(wk->conf->namespace, "", prefix, sizeof prefix);
	if (st == 0 && out != NULL) {
		for (line = strtok_r(out, "\n", &save); line != NULL; line = strtok_r(NULL, "\n", &save)) {
			if (strncmp(line, prefix, strlen(prefix)) != 0)
				continue;
			log_notice("removing container %s left by an earlier run of %s", line, wk->id);
			sandbox_rm_argv(wk->conf, &wk->rt, line, &argv);
			proc_run_sync(argv.v, NULL, 0);
		}
	}
	free(out);
	strv_free(&argv);
}

/* Options, configuration and start-up checks; fatalx() on any problem. */
static void
worker_setup(int argc, char **argv, bool *check_only)
{
	static const struct option opts[] = {
		{ "config", required_argument, NULL, 'c' }, { "redis", required_argument, NULL, 'r' },
		{ "id", required_argument, NULL, 'i' }, { "concurrency", required_argument, NULL, 'C' },
		{ "once", no_argument, NULL, 'o' }, { "verbose", no_argument, NULL, 'v' },
		{ "check", no_argument, NULL, 'n' }, { "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' }, { NULL, 0, NULL, 0 },
	};
	const char *cfile = NULL, *redis = NULL, *id = NULL, *conc = NULL, *path;
	char err[ERR_MAX];
	int ch, verbose = 0;
	long long n;

	while ((ch = getopt_long(argc, argv, "c:vnhV", opts, NULL)) != -1) {
		switch (ch) {
		case 'c': cfile = optarg; break;
		case 'r': redis = optarg; break;
		case 'i': id = optarg; break;
		case 'C': conc = optarg; break;
		case 'o': wk->once = true; break;
		case 'v': verbose++; break;
		case 'n': *check_only = true; break;
		case 'h': usage(stdout); exit(0);
		case 'V': printf("worker %s (protocol %d)\n", DEBATE_VERSION, PROTOCOL_VERSION); exit(0);
		default: usage(stderr); exit(2);
		}
	}
	if (optind < argc) {
		fprintf(stderr, "worker: unexpected argument \"%s\"\n", argv[optind]);
		usage(stderr);
		exit(2);
	}
	log_init("worker", LOG_INFO);
	wk->conf = &worker_conf;
	config_defaults(wk->conf);
	if ((path = config_find(cfile)) == NULL)
		fatalx("no configuration: neither ./worker.ini nor /etc/debate/worker.ini exists (use -c FILE)");
	if (config_load(path, wk->conf, err, sizeof err) != 0)
		fatalx("%s", err);
	if (redis == NULL)
		redis = getenv("REDIS_URL");
	if (redis != NULL && *redis != '\0') {
		free(wk->conf->redis_url);
		wk->conf->redis_url = xstrdup(redis);
	}
	if (conc != NULL) {
		if (parse_int(conc, 1, 1024, &n, err, sizeof err) != 0)
			fatalx("--concurrency: %s", err);
		wk->conf->concurrency = (long)n;
	}
	if (config_check(wk->conf, err, sizeof err) != 0)
		fatalx("%s", err);
	log_set_level(verbose ? LOG_DEBUG : wk->conf->log_level);
	wk->slots = wk->conf->concurrency;

	if (gethostname(wk->host, sizeof wk->host) != 0 || wk->host[0] == '\0')
		snprintf(wk->host, sizeof wk->host, "localhost");
	wk->host[strcspn(wk->host, ".")] = '\0';
	if (id != NULL)
		snprintf(wk->id, sizeof wk->id, "%s", id);
	else
		snprintf(wk->id, sizeof wk->id, "%s-%d", wk->host, (int)getpid());
	if (!id_valid(wk->id, strlen(wk->id)))
		fatalx("--id: \"%s\" must match [A-Za-z0-9][A-Za-z0-9_.-]{0,63}", wk->id);
	if (runtime_detect(wk->conf, &wk->rt, err, sizeof err) != 0)
		fatalx("%s", err);
	image_pick_runtime(wk->conf, &wk->rt);
}

/* Start, run the loop, clean up. */
int
main(int argc, char **argv)
{
	bool check_only = false;
	char err[ERR_MAX], tmpl[512];
	const char *tmp;

	wk = &worker_storage;
	TAILQ_INIT(&wk->jobs);
	worker_setup(argc, argv, &check_only);
	if (check_only) {
		printf("%s: ok (runtime %s%s)\n", wk->conf->path, runtime_name(&wk->rt),
		    wk->rt.path ? "" : ", no container");
		return 0;
	}
	keys_init(&wk->keys, wk->conf->namespace);
	wk->started_at = now_real();
	wk->host_cpus = cgroup_host_cpus();
	signal(SIGPIPE, SIG_IGN);

	if (image_ensure(wk->conf, &wk->rt, wk->conf->image, err, sizeof err) != 0)
		fatalx("%s", err);
	tmp = getenv("RUNTIME_DIRECTORY");
	if (tmp == NULL || *tmp == '\0')
		tmp = getenv("TMPDIR");
	snprintf(tmpl, sizeof tmpl, "%s/debate-%s-XXXXXX", tmp && *tmp ? tmp : "/tmp", wk->id);
	if ((wk->cid_dir = mkdtemp(tmpl)) == NULL)
		fatal("mkdtemp %s", tmpl);
	wk->cid_dir = xstrdup(wk->cid_dir);
	worker_sweep_own();

	wk->loop = ev_default_loop(EVFLAG_AUTO);
	ev_signal_init(&sig_term, sig_stop_cb, SIGTERM);
	ev_signal_init(&sig_int, sig_stop_cb, SIGINT);
	ev_signal_init(&sig_hup, sig_hup_cb, SIGHUP);
	ev_signal_start(wk->loop, &sig_term);
	ev_signal_start(wk->loop, &sig_int);
	ev_signal_start(wk->loop, &sig_hup);
	ev_timer_init(&drain_timer, drain_timer_cb, 0, 0);
	defer_init();
	if (wk->conf->metrics_listen != NULL && metrics_start(wk->conf->metrics_listen, err, sizeof err) != 0)
		fatalx("%s", err);
	notify_init();
	{
		double wd = notify_watchdog_interval();
		if (wd > 0) {
			ev_timer_init(&watchdog_timer, watchdog_cb, 0, wd / 2);
			ev_timer_again(wk->loop, &watchdog_timer);
		}
	}

	{
		/* The URL as the log shows it: its password masked. */
		struct redis_url u;
		char *shown;
		if (url_parse(wk->conf->redis_url, &u, err, sizeof err) != 0)
			fatalx("%s", err);	/* config_check() parsed it already */
		shown = url_display(&u);
		log_notice("worker %s %s: %ld slot%s, runtime %s, redis %s, namespace %s", wk->id,
		    DEBATE_VERSION, wk->slots, wk->slots == 1 ? "" : "s", runtime_name(&wk->rt), shown,
		    wk->conf->namespace);
		free(shown);
		url_free(&u);
	}
	rconn_scripts(script_table());
	wk->cmd = rconn_new("cmd", true, cmd_up, NULL);
	rconn_start(wk->cmd);
	job_init(&(struct job_hooks) { .slot_freed = worker_slot_freed, .job_gone = worker_check_exit });
	fetch_init(job_fetched);
	beat_init();

	ev_run(wk->loop, 0);

	log_info("exiting");
	fetch_stop();
	rconn_close(wk->cmd);
	defer_flush();
	upload_shutdown();
	metrics_stop();
	rmdir(wk->cid_dir);
	free(wk->cid_dir);
	runtime_free(&wk->rt);
	keys_free(&wk->keys);
	config_free(wk->conf);
	return exit_code;
}
