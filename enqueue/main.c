/*
 * main.c: enqueue's options, the subcommand table and --help, reading
 * worker.ini, and the ways out (errors, usage errors, signals).
 *
 * Global options (-c, --redis, --json, --raw, -h, --version) are accepted
 * before and after the subcommand; opt_next() handles them wherever they
 * appear and hands each subcommand only its own options.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "enqueue.h"

static struct enq enq_storage;
struct enq *en = &enq_storage;
volatile sig_atomic_t enq_interrupted;

enum { G_CONFIG = 1000, G_REDIS, G_JSON, G_RAW, G_HELP, G_VERSION };

static const struct opt opt_global[] = {
	{ "config", 'c', true, G_CONFIG },
	{ "redis", 0, true, G_REDIS },
	{ "json", 0, false, G_JSON },
	{ "raw", 0, false, G_RAW },
	{ "help", 'h', false, G_HELP },
	{ "version", 0, false, G_VERSION },
	{ NULL, 0, false, 0 },
};

static int main_help(int argc, char **argv);

static const struct command {
	const char *name;
	int (*fn)(int, char **);
	const char *summary;
	const char *usage;
} commands[] = {
	{ "submit", submit_main, "queue a build job",
	  "usage: enqueue submit --profile DIR|--profile-dir DIR --output DIR|--upload URL [options]\n"
	  "\n"
	  "Queue an archiso build.  DIR is relative to worker.ini's builds_root (an\n"
	  "absolute path below builds_root is made relative).  The job is checked\n"
	  "with the worker's own rules first; prints the job id.\n"
	  "\n"
	  "  --profile DIR     the archiso profile directory (this or --profile-dir)\n"
	  "  --profile-dir DIR a local profile, packed into the job (profile_archive)\n"
	  "  --output DIR      where the ISO goes (required unless --upload)\n"
	  "  --upload URL      PUT each artifact to URL ({name} is its name)\n"
	  "  --upload-header 'Name: value'  sent with each PUT (repeatable);\n"
	  "                    a value env:VAR is read from $VAR\n"
	  "  --id ID           the job id (default: YYYYmmdd-HHMMSS-<8 hex>)\n"
	  "  --memory M        memory limit: bytes, or 512m, 8g (default: the worker's)\n"
	  "  --cpus N          CPU limit (default: the worker's)\n"
	  "  --timeout S       seconds before the build is stopped\n"
	  "  --warning S       seconds before a warning event\n"
	  "  --image I         container image (must be allowed by the worker)\n"
	  "  --epoch N         SOURCE_DATE_EPOCH (default: now)\n"
	  "  --retries N       extra tries after a failed build (0 to 10)\n"
	  "  --meta KEY=VALUE  echoed back in the result (repeatable)\n"
	  "  --wait            wait for the result and exit by its status\n"
	  "  --wait-timeout S  give up waiting after S seconds (exit 8)\n"
	  "  --follow          print the job's events as they happen, then the result\n"
	  "  --rerun           run an id again whose job finished (its result is\n"
	  "                    dropped; events continue its seq); without it an id\n"
	  "                    already known is refused\n"
	  "  --json            print {\"id\": ...}, the result or the events as JSON\n"
	  "\n"
	  "Exit codes with --wait or --follow: 0 succeeded, 1 failed, 3 timed_out,\n"
	  "4 oom_killed, 5 cancelled, 6 error, 7 dead; 2 bad input; 8 Redis\n"
	  "unreachable or --wait-timeout reached; 130 interrupted.\n" },
	{ "status", status_main, "show a job's state and result",
	  "usage: enqueue status ID [--json] [--raw]\n"
	  "\n"
	  "Show the job hash {ns}:job:ID, the job's place in the queue and its\n"
	  "payload when it is queued or running, and its result when there is one.\n"
	  "Exit 1 when the job is unknown.  On a terminal, control characters in\n"
	  "the build's output are shown escaped (ESC as \\x1b); --raw prints them\n"
	  "as they came.\n" },
	{ "watch", watch_main, "print events as they happen",
	  "usage: enqueue watch [ID] [--timeout S] [--json] [--raw]\n"
	  "\n"
	  "Print the events of job ID as they happen until it finishes (exit by\n"
	  "its status, as submit --wait; 8 after --timeout S), or, without ID,\n"
	  "the lifecycle events of every job until Ctrl-C.  --json prints one\n"
	  "JSON object per event.  On a terminal, control characters in the\n"
	  "build's output are shown escaped (ESC as \\x1b); --raw prints them\n"
	  "as they came.\n" },
	{ "queue", queue_main, "lengths of the queue, active lists, delayed and dead",
	  "usage: enqueue queue [--json]\n"
	  "\n"
	  "Print the length of {ns}:queue, of each worker's active list, of\n"
	  "{ns}:delayed (retries waiting) and of {ns}:dead.\n" },
	{ "cancel", cancel_main, "cancel a queued or running job",
	  "usage: enqueue cancel ID [--json]\n"
	  "\n"
	  "Ask the workers to cancel job ID (HSET {ns}:cancel ID <now>).  A queued\n"
	  "job is never started; a running one is stopped within stats_interval.\n" },
	{ "dead", dead_main, "list dead letters",
	  "usage: enqueue dead [--limit N] [--json]\n"
	  "\n"
	  "List the payloads the workers refused or lost, newest first: index,\n"
	  "time, id, reason, error and payload size.  --limit N shows the first N\n"
	  "(default 50, 0 for all).\n" },
	{ "retry-dead", retry_dead_main, "put dead letters back on the queue",
	  "usage: enqueue retry-dead INDEX... | --all | --id ID [--json]\n"
	  "\n"
	  "Put the original payload of each chosen dead letter back on the queue,\n"
	  "remove the entry from {ns}:dead and reset its job hash to queued.\n"
	  "INDEX is the index `enqueue dead` shows; --id picks the newest entry of\n"
	  "that job.  An entry removed meanwhile by someone else is skipped.\n" },
	{ "workers", workers_main, "list live workers and their running jobs",
	  "usage: enqueue workers [--json]\n"
	  "\n"
	  "List the workers in {ns}:workers: id, host, uptime, running jobs and\n"
	  "slots, version, and each running job with its phase and elapsed time.\n"
	  "A worker whose heartbeat expired is shown as lost.\n" },
	{ "logs", logs_main, "replay a job's stored events",
	  "usage: enqueue logs ID [--json] [--raw]\n"
	  "\n"
	  "Print the events stored in {ns}:log:ID, as submit --follow does.\n"
	  "--json prints one JSON object per event.  Exit 1 when none are stored.\n"
	  "On a terminal, control characters in the build's output are shown\n"
	  "escaped (ESC as \\x1b); --raw prints them as they came.\n" },
	{ "top", top_main, "a live view of the queue and the workers",
	  "usage: enqueue top [--interval S] [--once] [--json]\n"
	  "\n"
	  "Show the queue depth, throughput, workers, running builds (phase,\n"
	  "elapsed, a bar to the timeout) and recent failures, refreshed every S\n"
	  "seconds (default 2) in place on a terminal.  q or Ctrl-C quits.\n"
	  "--once prints one snapshot and exits (--json: as JSON).\n" },
	{ "help", main_help, "help on a command",
	  "usage: enqueue help [COMMAND]\n" },
	{ NULL, NULL, NULL, NULL },
};

/* The program's own --help. */
static void
main_usage(FILE *f)
{
	fprintf(f, "usage: enqueue [-c FILE] [--redis URL] [--json] [--raw] COMMAND [ARGS]\n"
	    "\n"
	    "The client of the debate build queue (wire contract: PROTOCOL.md).\n"
	    "\n"
	    "Commands:\n");
	for (const struct command *c = commands; c->name != NULL; c++)
		fprintf(f, "  %-11s %s\n", c->name, c->summary);
	fprintf(f, "\n"
	    "Options (before or after the command):\n"
	    "  -c FILE      worker.ini (default ./worker.ini, then /etc/debate/worker.ini)\n"
	    "  --redis URL  redis://[[user]:pass@]host:port/db, unix:///path.sock?db=N or\n"
	    "               sentinel://host:port[,host:port]/master (also REDIS_URL)\n"
	    "  --json       output for scripts\n"
	    "  --raw        print build output as it came, control characters and\n"
	    "               escape sequences included (on a terminal they are shown\n"
	    "               escaped, as \\x1b; to a pipe or a file bytes always pass)\n"
	    "  -h, --help   help (also after a command)\n"
	    "  --version    print the version\n"
	    "\n"
	    "The Redis password comes from the URL, worker.ini's password, or the\n"
	    "environment variable named by password_env (DEBATE_REDIS_PASSWORD).\n"
	    "Exit codes: 0 ok, 1 failed or not found, 2 usage, 8 Redis; see\n"
	    "`enqueue submit --help` for the job statuses.\n");
}

/* The table entry of a command, or NULL. */
static const struct command *
main_find(const char *name)
{
	for (const struct command *c = commands; name != NULL && c->name != NULL; c++)
		if (strcmp(c->name, name) == 0)
			return c;
	return NULL;
}

/* Print the help of cmd (the program's when NULL) and exit 0. */
static void __attribute__((noreturn))
main_print_help(const char *cmd)
{
	const struct command *c = main_find(cmd);

	if (c == NULL)
		main_usage(stdout);
	else
		fputs(c->usage, stdout);
	exit(EXIT_OK);
}

/* enqueue help [COMMAND] */
static int
main_help(int argc, char **argv)
{
	struct opt_state st;
	const char *arg, *which = NULL;
	static const struct opt none[] = { { NULL, 0, false, 0 } };

	opt_init(&st, argc, argv, "help");
	while (opt_next(&st, none, &arg) == OPT_ARG) {
		if (which != NULL)
			enq_usage("help", "one command at a time");
		which = arg;
	}
	if (which != NULL && main_find(which) == NULL)
		enq_usage(NULL, "unknown command \"%s\"", which);
	main_print_help(which);
}

/* Start parsing argv[1..] for subcommand cmd. */
void
opt_init(struct opt_state *st, int argc, char **argv, const char *cmd)
{
	memset(st, 0, sizeof *st);
	st->argc = argc;
	st->argv = argv;
	st->i = 1;
	st->cmd = cmd;
}

/* The entry of opts named by a long name of length n, or by letter. */
static const struct opt *
opt_match(const struct opt *opts, const char *name, size_t n, int letter)
{
	for (; opts->name != NULL; opts++) {
		if (letter != 0 ? opts->letter == letter :
		    strlen(opts->name) == n && strncmp(opts->name, name, n) == 0)
			return opts;
	}
	return NULL;
}

/* Act on a global option. */
static void
opt_global_set(const struct opt_state *st, int id, const char *val)
{
	switch (id) {
	case G_CONFIG: en->config_path = val; break;
	case G_REDIS: en->redis_url = val; break;
	case G_JSON: en->json = true; break;
	case G_RAW: en->raw = true; break;
	case G_HELP: main_print_help(st->cmd);
	case G_VERSION:
		printf("enqueue %s (protocol %d)\n", DEBATE_VERSION, PROTOCOL_VERSION);
		exit(EXIT_OK);
	}
}

/* The next option or positional argument. */
int
opt_next(struct opt_state *st, const struct opt *opts, const char **arg)
{
	const struct opt *o;
	const char *a, *name, *eq = NULL, *val = NULL;
	bool global;

	for (;;) {
		if (st->i >= st->argc)
			return OPT_END;
		a = st->argv[st->i++];
		if (st->rest || a[0] != '-' || a[1] == '\0') {
			*arg = a;
			return OPT_ARG;
		}
		if (strcmp(a, "--") == 0) {
			st->rest = true;
			continue;
		}
		if (a[1] == '-') {
			name = a + 2;
			eq = strchr(name, '=');
			size_t n = eq ? (size_t)(eq - name) : strlen(name);
			o = opt_match(opts, name, n, 0);
			global = o == NULL && (o = opt_match(opt_global, name, n, 0)) != NULL;
		} else {
			o = opt_match(opts, "", 0, (unsigned char)a[1]);
			global = o == NULL && (o = opt_match(opt_global, "", 0, (unsigned char)a[1])) != NULL;
			if (o != NULL && a[2] != '\0') {
				if (!o->has_arg)
					enq_usage(st->cmd, "unknown option %s", a);
				eq = a + 1;	/* "-cFILE": the value follows the letter */
			}
		}
		if (o == NULL)
			enq_usage(st->cmd, "unknown option %s", a);
		if (o->has_arg) {
			if (eq != NULL)
				val = eq + 1;
			else if (st->i < st->argc)
				val = st->argv[st->i++];
			else
				enq_usage(st->cmd, "%s needs a value", a);
		} else if (eq != NULL)
			enq_usage(st->cmd, "--%s takes no value", o->name);
		if (global) {
			opt_global_set(st, o->id, val);
			continue;
		}
		*arg = val;
		return o->id;
	}
}

/* Free what the process holds (at exit). */
static void
enq_cleanup(void)
{
	redis_close(&en->sub);
	redis_close(&en->rc);
	if (en->keys.ns != NULL)
		keys_free(&en->keys);
	if (en->conf_loaded) {
		config_free(&en->conf);
		en->conf_loaded = false;
	}
}

/* Read worker.ini, apply the Redis URL overrides, connect when asked. */
void
enq_setup(bool connect)
{
	const char *path, *url, *from = "--redis";
	struct redis_url u;
	char err[ERR_MAX];

	config_defaults(&en->conf);
	en->conf_loaded = true;
	path = config_find(en->config_path);
	if (path != NULL && config_load(path, &en->conf, err, sizeof err) != 0)
		enq_die(EXIT_USAGE, "%s", err);
	if ((url = en->redis_url) == NULL) {
		url = getenv("REDIS_URL");
		from = "REDIS_URL";
		if (url != NULL && *url == '\0')
			url = NULL;	/* an empty variable is an unset one */
	}
	if (url != NULL) {
		if (url_parse(url, &u, err, sizeof err) != 0)
			enq_die(EXIT_USAGE, "%s: %s", from, err);
		url_free(&u);
		free(en->conf.redis_url);
		en->conf.redis_url = xstrdup(url);
	}
	if (config_check(&en->conf, err, sizeof err) != 0)
		enq_die(EXIT_USAGE, "%s", err);
	keys_init(&en->keys, en->conf.namespace);
	if (connect)
		en->rc = redis_connect(&en->conf);
}

/* Print a message with the program's prefix. */
static void
enq_vmsg(const char *prefix, const char *fmt, va_list ap)
{
	fflush(stdout);
	fprintf(stderr, "enqueue: %s", prefix);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
}

/* Print an error and exit with code. */
void
enq_die(int code, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	enq_vmsg("", fmt, ap);
	va_end(ap);
	exit(code);
}

/* Print a warning and carry on. */
void
enq_warn(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	enq_vmsg("warning: ", fmt, ap);
	va_end(ap);
}

/* A usage error: the message, where to find help, exit 2. */
void
enq_usage(const char *cmd, const char *fmt, ...)
{
	char prefix[64];
	va_list ap;

	snprintf(prefix, sizeof prefix, "%s%s", cmd ? cmd : "", cmd ? ": " : "");
	va_start(ap, fmt);
	enq_vmsg(prefix, fmt, ap);
	va_end(ap);
	fprintf(stderr, "Try 'enqueue %s%s--help'.\n", cmd ? cmd : "", cmd ? " " : "");
	exit(EXIT_USAGE);
}

/* The signal handler: note it; the loops look. */
static void
enq_on_signal(int sig)
{
	(void)sig;
	enq_interrupted = 1;
}

/* Catch SIGINT and SIGTERM without SA_RESTART. */
void
enq_catch_signals(void)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof sa);
	sa.sa_handler = enq_on_signal;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
}

/* Check a job id given on the command line. */
const char *
enq_job_id(const char *cmd, const char *s)
{
	if (s == NULL)
		enq_usage(cmd, "a job ID is required");
	if (!id_valid(s, strlen(s)))
		enq_die(EXIT_USAGE, "%s: job id \"%.80s\" is not valid: it must match "
		    "[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", cmd, s);
	return s;
}

/* The one job id a command takes, its only argument. */
const char *
enq_one_id(int argc, char **argv, const char *cmd)
{
	static const struct opt none[] = { { NULL, 0, false, 0 } };
	struct opt_state st;
	const char *arg, *id = NULL;

	opt_init(&st, argc, argv, cmd);
	while (opt_next(&st, none, &arg) != OPT_END) {
		if (id != NULL)
			enq_usage(cmd, "unexpected argument \"%s\"", arg);
		id = arg;
	}
	return enq_job_id(cmd, id);
}

/* Dispatch to the subcommand. */
int
main(int argc, char **argv)
{
	static const struct opt none[] = { { NULL, 0, false, 0 } };
	const struct command *c;
	struct opt_state st;
	const char *arg;

	atexit(enq_cleanup);
	signal(SIGPIPE, SIG_IGN);
	opt_init(&st, argc, argv, NULL);
	if (opt_next(&st, none, &arg) == OPT_END) {
		main_usage(stderr);
		return EXIT_USAGE;
	}
	if ((c = main_find(arg)) == NULL)
		enq_usage(NULL, "unknown command \"%s\"", arg);
	return c->fn(argc - st.i + 1, argv + st.i - 1);
}
