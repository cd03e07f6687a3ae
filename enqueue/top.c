/*
 * top.c: enqueue top, a live view of the queue.
 *
 * Each refresh reads the queue lengths, the workers and the jobs they run
 * (workers.c), the throughput (how much {ns}:results grew since the last
 * refresh) and the recent failures among the last results.  On a terminal
 * the screen is redrawn in place and q quits (stdin goes to raw mode only
 * when it is a terminal, and is restored at exit); elsewhere snapshots
 * are printed one after the other.  --once prints one and exits.
 */
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "enqueue.h"

#define TOP_FAILURES 10
#define TOP_BAR 20

enum { O_INTERVAL = 1, O_ONCE };

struct top_fail {
	char id[ID_MAX + 1];
	char status[32];
	char error[160];
	double finished_at;
	double exit_code;
};

struct top_snap {
	long long queued, delayed, dead, results;
	double rate;		/* results per second; < 0 unknown */
	struct workers fleet;
	struct top_fail fails[TOP_FAILURES];
	size_t nfails;
};

static struct termios top_saved;
static bool top_raw, top_screen;

/* Put the terminal back as we found it. */
static void
top_restore(void)
{
	if (top_raw)
		tcsetattr(STDIN_FILENO, TCSAFLUSH, &top_saved);
	top_raw = false;
	if (top_screen) {
		fputs("\033[?25h", stdout);
		fflush(stdout);
	}
	top_screen = false;
}

/* Read keys without echo or a newline, when stdin is a terminal. */
static void
top_keys_raw(void)
{
	struct termios t;

	if (!isatty(STDIN_FILENO) || tcgetattr(STDIN_FILENO, &top_saved) != 0)
		return;
	t = top_saved;
	t.c_lflag &= ~(tcflag_t)(ICANON | ECHO);
	t.c_cc[VMIN] = 0;
	t.c_cc[VTIME] = 0;
	if (tcsetattr(STDIN_FILENO, TCSAFLUSH, &t) == 0)
		top_raw = true;
}

/* The failures among the last results. */
static void
top_failures(struct top_snap *s)
{
	redisReply *r = redis_commandv(en->rc, "LRANGE", en->keys.results, "0", "20");
	msgpack_unpacked u;

	msgpack_unpacked_init(&u);
	for (size_t i = 0; i < r->elements && s->nfails < TOP_FAILURES; i++) {
		const redisReply *e = r->element[i];
		struct top_fail *f = &s->fails[s->nfails];
		if (e->type != REDIS_REPLY_STRING || !print_unpack(e->str, e->len, &u))
			continue;
		memset(f, 0, sizeof *f);
		mp_get_str(&u.data, "status", f->status, sizeof f->status);
		if (f->status[0] == '\0' || strcmp(f->status, "succeeded") == 0)
			continue;
		mp_get_str(&u.data, "id", f->id, sizeof f->id);
		mp_get_str(&u.data, "error", f->error, sizeof f->error);
		f->exit_code = -1;
		mp_get_num(&u.data, "exit_code", &f->exit_code);
		mp_get_num(&u.data, "finished_at", &f->finished_at);
		s->nfails++;
	}
	msgpack_unpacked_destroy(&u);
	freeReplyObject(r);
}

/* Read everything one screen shows. */
static void
top_read(struct top_snap *s, long long *prev, double *prev_t)
{
	double now = now_mono();

	memset(s, 0, sizeof *s);
	s->queued = redis_count(en->rc, "LLEN", en->keys.queue);
	s->delayed = redis_count(en->rc, "ZCARD", en->keys.delayed);
	s->dead = redis_count(en->rc, "LLEN", en->keys.dead);
	s->results = redis_count(en->rc, "LLEN", en->keys.results);
	s->rate = -1;
	if (*prev >= 0 && s->results >= *prev && now > *prev_t)
		s->rate = (double)(s->results - *prev) / (now - *prev_t);
	*prev = s->results;
	*prev_t = now;
	workers_load(en->rc, &s->fleet, true);
	top_failures(s);
}

/* A bar of how much of the timeout a build used. */
static void
top_bar(double elapsed, double timeout)
{
	double frac = timeout > 0 && elapsed > 0 ? elapsed / timeout : 0;
	int fill;

	if (frac > 1)
		frac = 1;
	fill = (int)(frac * TOP_BAR);
	fputc('[', stdout);
	fputs(print_sgr(frac >= 0.75 ? "33" : "32"), stdout);
	for (int i = 0; i < TOP_BAR; i++)
		fputc(i < fill ? '#' : '-', stdout);
	printf("%s] %3d%%", print_sgr("0"), (int)(frac * 100));
}

/* One screen for people. */
static void
top_show(const struct top_snap *s)
{
	char clock[16], b1[32], b2[32];
	time_t t = time(NULL);
	size_t lost = 0, running = 0;
	struct tm tm;

	localtime_r(&t, &tm);
	strftime(clock, sizeof clock, "%H:%M:%S", &tm);
	for (size_t i = 0; i < s->fleet.n; i++) {
		lost += s->fleet.w[i].lost;
		running += s->fleet.w[i].njobs;
	}
	printf("%senqueue top%s  namespace %s  %s%s\n", print_sgr("1"), print_sgr("0"), en->conf.namespace,
	    clock, top_raw ? "  (q quits)" : "");
	printf("queue %lld   delayed %lld   dead %lld   running %zu   workers %zu", s->queued, s->delayed,
	    s->dead, running, s->fleet.n - lost);
	if (lost > 0)
		printf(" (+%zu lost)", lost);
	if (s->rate >= 0)
		printf("   throughput %.2f/s\n", s->rate);
	else
		printf("   throughput -\n");

	printf("\n%s%-28s %-16s %-6s %-8s %s%s\n", print_sgr("1"), "WORKER", "HOST", "JOBS", "UPTIME",
	    "VERSION", print_sgr("0"));
	for (size_t i = 0; i < s->fleet.n; i++) {
		const struct workers_entry *w = &s->fleet.w[i];
		char slots[32];
		if (w->lost) {
			printf("%-28s %s(lost: no heartbeat for %s)%s\n", print_safe(w->id), print_sgr("31"),
			    print_duration(now_real() - w->score, b1, sizeof b1), print_sgr("0"));
			continue;
		}
		snprintf(slots, sizeof slots, "%ld/%ld", w->running, w->concurrency);
		printf("%-28s %-16s %-6s %-8s %s\n", print_safe(w->id), print_safe(w->host), slots,
		    print_duration(now_real() - w->started_at, b1, sizeof b1), print_safe(w->version));
	}

	printf("\n%s%-26s %-20s %-12s %-17s %s%s\n", print_sgr("1"), "RUNNING", "WORKER", "PHASE",
	    "ELAPSED/TIMEOUT", "", print_sgr("0"));
	for (size_t i = 0; i < s->fleet.n; i++) {
		const struct workers_entry *w = &s->fleet.w[i];
		for (size_t j = 0; j < w->njobs; j++) {
			const struct workers_job *fj = &w->jobs[j];
			double el = fj->started_at > 0 ? now_real() - fj->started_at : 0;
			char both[64];
			snprintf(both, sizeof both, "%s/%s", print_duration(el, b1, sizeof b1),
			    fj->timeout > 0 ? print_duration(fj->timeout, b2, sizeof b2) : "?");
			printf("%-26s %-20.20s %-12s %-17s ", print_safe(fj->id), print_safe(w->id),
			    fj->phase[0] ? print_safe(fj->phase) : "-",
			    both);
			if (fj->timeout > 0)
				top_bar(el, fj->timeout);
			putchar('\n');
		}
	}

	printf("\n%s%-26s %-11s %-5s %-9s %s%s\n", print_sgr("1"), "RECENT FAILURES", "STATUS", "EXIT",
	    "AGO", "ERROR", print_sgr("0"));
	for (size_t i = 0; i < s->nfails; i++) {
		const struct top_fail *f = &s->fails[i];
		const char *ago = f->finished_at > 0 ?
		    print_duration(now_real() - f->finished_at, b1, sizeof b1) : "-";
		printf("%-26s %s%-11s%s %-5g %-9s %s\n", f->id, print_sgr("31"), print_safe(f->status),
		    print_sgr("0"), f->exit_code, ago, print_safe(f->error));
	}
}

/* One snapshot as JSON. */
static void
top_json(const struct top_snap *s)
{
	struct jbuf jb;
	size_t running = 0;

	for (size_t i = 0; i < s->fleet.n; i++)
		running += s->fleet.w[i].njobs;
	print_json_begin(&jb);
	msgpack_pack_map(&jb.pk, 7);
	mp_kv_int(&jb.pk, "queue", s->queued);
	mp_kv_int(&jb.pk, "delayed", s->delayed);
	mp_kv_int(&jb.pk, "dead", s->dead);
	mp_kv_int(&jb.pk, "workers", (int64_t)s->fleet.n);
	mp_kv_int(&jb.pk, "running", (int64_t)running);
	mp_str(&jb.pk, "throughput");
	if (s->rate >= 0)
		msgpack_pack_double(&jb.pk, s->rate);
	else
		msgpack_pack_nil(&jb.pk);
	mp_str(&jb.pk, "failures");
	msgpack_pack_array(&jb.pk, s->nfails);
	for (size_t i = 0; i < s->nfails; i++) {
		msgpack_pack_map(&jb.pk, 4);
		print_json_kv_str(&jb, "id", s->fails[i].id);
		print_json_kv_str(&jb, "status", s->fails[i].status);
		mp_kv_double(&jb.pk, "exit_code", s->fails[i].exit_code);
		print_json_kv_str(&jb, "error", s->fails[i].error);
	}
	print_json_end(&jb);
}

/* Sleep up to secs, waking for q, Ctrl-C or a signal; true to quit. */
static bool
top_pause(double secs)
{
	double until = now_mono() + secs;
	struct pollfd pfd = { .fd = STDIN_FILENO, .events = POLLIN };
	char c;

	while (!enq_interrupted) {
		double left = until - now_mono();
		if (left <= 0)
			return false;
		if (poll(&pfd, top_raw ? 1 : 0, left > 0.1 ? 100 : (int)(left * 1000) + 1) > 0 &&
		    read(STDIN_FILENO, &c, 1) == 1 && (c == 'q' || c == 'Q'))
			return true;
	}
	return true;
}

/* enqueue top */
int
top_main(int argc, char **argv)
{
	static const struct opt opts[] = { { "interval", 0, true, O_INTERVAL }, { "once", 0, false, O_ONCE },
		{ NULL, 0, false, 0 } };
	struct opt_state st;
	struct top_snap s;
	const char *arg;
	char err[ERR_MAX];
	double interval = 2, prev_t = 0;
	long long prev = -1;
	bool once = false, tty;
	int o;

	opt_init(&st, argc, argv, "top");
	while ((o = opt_next(&st, opts, &arg)) != OPT_END) {
		if (o == O_ONCE)
			once = true;
		else if (o == OPT_ARG)
			enq_usage("top", "unexpected argument \"%s\"", arg);
		else if (parse_seconds(arg, &interval, err, sizeof err) != 0 || interval < 0.1)
			enq_die(EXIT_USAGE, "--interval: \"%s\" is not a number of seconds (0.1 or more)",
			    arg);
	}
	enq_setup(true);
	tty = isatty(STDOUT_FILENO) && !once && !en->json;
	if (!once) {
		enq_catch_signals();
		atexit(top_restore);
		top_keys_raw();
		if (tty) {
			top_screen = true;
			fputs("\033[?25l", stdout);
		}
	}
	for (;;) {
		top_read(&s, &prev, &prev_t);
		if (en->json)
			top_json(&s);
		else {
			if (tty)
				fputs("\033[H\033[2J", stdout);
			top_show(&s);
			if (!tty && !once)
				putchar('\n');
		}
		workers_free(&s.fleet);
		print_flush();
		if (once || top_pause(interval))
			break;
	}
	top_restore();
	return EXIT_OK;
}
