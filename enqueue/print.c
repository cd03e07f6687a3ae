/*
 * print.c: what enqueue prints.  One event printer for submit --follow,
 * watch, logs and top: a readable line per event with the time since the
 * build started, log lines as they came (stderr lines marked with "! "),
 * WARNING lines highlighted, and on a terminal a progress bar redrawn in
 * place.  Colours only when stdout is a terminal and NO_COLOR is unset.
 * Also the result printer and the JSON output, which is built as msgpack
 * and printed by mp_json() so there is one JSON writer.
 *
 * Everything read from Redis is hostile text (a build prints any bytes):
 * on a terminal it goes out through print_text() or print_safe(), which
 * escape control characters, so only the printer's own colours and bar
 * ever reach the terminal as escape sequences.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include "enqueue.h"

/* Whether stdout gets colours. */
static bool
print_color(void)
{
	static int color = -1;

	if (color < 0)
		color = isatty(STDOUT_FILENO) && getenv("NO_COLOR") == NULL;
	return color;
}

/* The escape sequence for SGR code, or "" without colours. */
const char *
print_sgr(const char *code)
{
	static char ring[8][24];
	static unsigned next;
	char *b;

	if (!print_color())
		return "";
	b = ring[next++ % 8];
	snprintf(b, sizeof ring[0], "\033[%sm", code);
	return b;
}

/* Whether text from Redis is escaped: stdout is a terminal and no --raw. */
static bool
print_escaping(void)
{
	static int esc = -1;

	if (esc < 0)
		esc = isatty(STDOUT_FILENO) && !en->raw;
	return esc;
}

/*
 * s[0..n) escaped into out (room for 4 * n + 1 bytes always suffices):
 * C0 controls but tab and newline, DEL and bytes that are not UTF-8 as
 * \xNN, C1 controls (U+0080-U+009F) as \u00NN.  Stops before an escape
 * that does not fit in outlen - 1 (*used: the input bytes taken); returns
 * the length written.
 */
static size_t
print_escape(char *out, size_t outlen, const char *s, size_t n, size_t *used)
{
	size_t i = 0, o = 0, k, w;
	bool valid;
	char e[8];

	while (i < n) {
		unsigned char c = (unsigned char)s[i];
		k = utf8_next(s + i, n - i, &valid);
		if (c == '\t' || c == '\n' || (c >= 0x20 && c < 0x7f) ||
		    (valid && k > 1 && !(k == 2 && c == 0xc2 && (unsigned char)s[i + 1] < 0xa0))) {
			w = k;	/* printable, or a character beyond the C1 block */
			memcpy(e, s + i, k);
		} else if (valid && k == 2) {
			w = (size_t)snprintf(e, sizeof e, "\\u%04x", (unsigned char)s[i + 1]);
		} else {
			w = (size_t)snprintf(e, sizeof e, "\\x%02x", c);
			k = 1;	/* each byte of an ill-formed sequence on its own */
		}
		if (o + w >= outlen)
			break;
		memcpy(out + o, e, w);
		o += w;
		i += k;
	}
	out[o] = '\0';
	*used = i;
	return o;
}

/* Write text from Redis to stdout, escaped on a terminal. */
void
print_text(const char *s, size_t n)
{
	char buf[1024];
	size_t len, used;

	if (!print_escaping()) {
		fwrite(s, 1, n, stdout);
		return;
	}
	while (n > 0) {
		len = print_escape(buf, sizeof buf, s, n, &used);	/* whole characters */
		fwrite(buf, 1, len, stdout);
		s += used;
		n -= used;
	}
}

/* s escaped for a printf argument (one of 8 buffers, reused in turn). */
const char *
print_safe(const char *s)
{
	static char ring[8][4 * 1024 + 1];
	static unsigned next;
	size_t used;
	char *b;

	if (!print_escaping())
		return s;
	b = ring[next++ % 8];
	print_escape(b, sizeof ring[0], s, strlen(s), &used);
	return b;
}

/* Flush stdout; a reader that went away (a closed pipe) ends us quietly. */
void
print_flush(void)
{
	if (fflush(stdout) != 0 && errno == EPIPE)
		exit(EXIT_OK);
}

/* Set up a printer. */
void
print_init(struct printer *p, bool multi, bool json)
{
	memset(p, 0, sizeof *p);
	p->multi = multi;
	p->json = json;
	p->color = print_color() && !json;
	p->bar = isatty(STDOUT_FILENO) && !json && !multi;
}

/* A duration for people. */
const char *
print_duration(double secs, char *buf, size_t len)
{
	long s;

	if (secs < 0)
		secs = 0;	/* clocks of two hosts disagree */
	s = (long)secs;
	if (secs < 60)
		snprintf(buf, len, "%.1fs", secs);
	else if (s < 3600)
		snprintf(buf, len, "%ldm%02lds", s / 60, s % 60);
	else if (s < 86400)
		snprintf(buf, len, "%ldh%02ldm", s / 3600, s % 3600 / 60);
	else
		snprintf(buf, len, "%ldd%02ldh", s / 86400, s % 86400 / 3600);
	return buf;
}

/* The width of the terminal on stdout. */
static int
print_columns(void)
{
	struct winsize ws;

	if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 20)
		return ws.ws_col;
	return 80;
}

/* Erase the progress bar before a line is printed. */
void
print_bar_clear(struct printer *p)
{
	if (p->bar_drawn) {
		fputs("\r\033[K", stdout);
		p->bar_drawn = false;
	}
}

/* Draw the progress bar: phase, elapsed / timeout and a bar. */
void
print_bar(struct printer *p)
{
	char el[32], to[32], text[160], mem[32];
	double elapsed, frac;
	int width, fill;

	if (!p->bar || p->started <= 0 || p->done)
		return;
	elapsed = now_real() - p->started;
	print_duration(elapsed, el, sizeof el);
	if (p->timeout > 0)
		print_duration(p->timeout, to, sizeof to);
	else
		snprintf(to, sizeof to, "?");
	snprintf(text, sizeof text, " %s  %s / %s%s%s ", p->phase[0] ? print_safe(p->phase) : "starting", el, to,
	    p->memory ? "  mem " : "", p->memory ? fmt_bytes(p->memory, mem, sizeof mem) : "");
	width = print_columns() - (int)strlen(text) - 8;
	if (width > 40)
		width = 40;
	frac = p->timeout > 0 && elapsed > 0 ? elapsed / p->timeout : 0;
	if (frac > 1)
		frac = 1;
	fill = width > 0 ? (int)(frac * width) : 0;
	fputs("\r\033[K", stdout);
	fprintf(stdout, "%s%s%s", print_sgr("1"), text, print_sgr("0"));
	if (width > 0) {
		fputc('[', stdout);
		for (int i = 0; i < width; i++)
			fputc(i < fill ? '#' : '-', stdout);
		fprintf(stdout, "] %3d%%", (int)(frac * 100));
	}
	p->bar_drawn = true;
	print_flush();
}

/* The lead of an event line: elapsed time, or clock and id. */
static void
print_lead(struct printer *p, const msgpack_object *ev, double ts)
{
	char id[ID_MAX + 1] = "?";

	if (p->multi) {
		time_t t = (time_t)ts;
		struct tm tm;
		localtime_r(&t, &tm);
		mp_get_str(ev, "id", id, sizeof id);
		printf("%02d:%02d:%02d %s ", tm.tm_hour, tm.tm_min, tm.tm_sec, print_safe(id));
	} else
		printf("[%6.1fs] ", p->started > 0 ? ts - p->started : 0.0);
}

/* One output line of a log event. */
static void
print_log_line(const msgpack_object *line, bool err)
{
	const char *s;
	size_t n;
	bool warn;

	if (line->type != MSGPACK_OBJECT_STR)
		return;
	s = line->via.str.ptr;
	n = line->via.str.size;
	warn = memmem(s, n, "WARNING", 7) != NULL;
	printf("%s%s", warn ? print_sgr("1;33") : (err ? print_sgr("31") : ""), err ? "! " : "");
	print_text(s, n);
	printf("%s\n", (warn || err) ? print_sgr("0") : "");
}

/* The started event's own text. */
static void
print_started(struct printer *p, const msgpack_object *ev)
{
	const msgpack_object *lim = mp_get(ev, "limits");
	char worker[128] = "?", rt[32] = "?", image[256] = "?", clamped[128], mem[32];
	double memory = 0, cpus = 0, timeout = 0, warning = 0, attempt = 1;

	mp_get_str(ev, "worker", worker, sizeof worker);
	mp_get_str(ev, "runtime", rt, sizeof rt);
	mp_get_str(ev, "image", image, sizeof image);
	mp_get_num(ev, "attempt", &attempt);
	mp_get_num(lim, "memory", &memory);
	mp_get_num(lim, "cpus", &cpus);
	mp_get_num(lim, "timeout", &timeout);
	mp_get_num(lim, "warning", &warning);
	p->timeout = timeout;
	p->phase[0] = '\0';
	printf("%sstarted%s on %s (%s, %s): memory %s, %g cpus, timeout %gs, warning at %gs",
	    print_sgr("1"), print_sgr("0"), print_safe(worker), print_safe(rt), print_safe(image),
	    fmt_bytes(memory > 0 ? (uint64_t)memory : 0, mem, sizeof mem), cpus, timeout, warning);
	if (attempt > 1)
		printf(", attempt %g", attempt);
	if (mp_get_str(ev, "clamped", clamped, sizeof clamped))
		printf(" (%s)", print_safe(clamped));
	putchar('\n');
}

/* The finished event: the result in one line. */
static void
print_finished(struct printer *p, const msgpack_object *ev)
{
	const msgpack_object *res = mp_get(ev, "result");
	char status[32] = "?", err[ERR_MAX] = "", dur[32];
	double code = -1, duration = 0;

	mp_get_str(res, "status", status, sizeof status);
	mp_get_num(res, "exit_code", &code);
	mp_get_num(res, "duration", &duration);
	mp_get_str(res, "error", err, sizeof err);
	snprintf(p->status, sizeof p->status, "%s", status);
	p->done = true;
	printf("%sfinished: %s%s (exit %g) in %s%s%s\n",
	    print_sgr(strcmp(status, "succeeded") ? "1;31" : "1;32"), print_safe(status), print_sgr("0"),
	    code, print_duration(duration, dur, sizeof dur), err[0] ? ": " : "", print_safe(err));
}

/* Print one event; false when it repeats one already printed. */
static bool
print_event(struct printer *p, const msgpack_object *ev)
{
	char type[32] = "?", s1[ERR_MAX] = "", s2[ERR_MAX] = "";
	double ts = now_real(), seq = 0, d = 0, d2 = 0;

	mp_get_str(ev, "type", type, sizeof type);
	mp_get_num(ev, "ts", &ts);
	if (!p->multi && mp_get_num(ev, "seq", &seq)) {
		if (seq <= (double)p->last_seq)
			return false;
		p->last_seq = (uint64_t)seq;
	}
	if (strcmp(type, "started") == 0 || p->started <= 0)
		p->started = ts;
	if (p->json) {
		mp_json(stdout, ev);
		putchar('\n');
		if (strcmp(type, "finished") == 0)
			mp_get_str(mp_get(ev, "result"), "status", p->status, sizeof p->status);
		if (strcmp(type, "dead") == 0)
			snprintf(p->status, sizeof p->status, "dead");
		p->done = strcmp(type, "finished") == 0 || strcmp(type, "dead") == 0;
		print_flush();
		return true;
	}
	print_bar_clear(p);
	if (strcmp(type, "log") == 0) {
		const msgpack_object *lines = mp_get(ev, "lines");
		bool err = mp_get_str(ev, "stream", s1, sizeof s1) && strcmp(s1, "stderr") == 0;
		if (mp_get_num(ev, "dropped", &d) && d > 0) {
			print_lead(p, ev, ts);
			printf("(%g lines dropped)\n", d);
		}
		if (lines != NULL && lines->type == MSGPACK_OBJECT_ARRAY)
			for (uint32_t i = 0; i < lines->via.array.size; i++)
				print_log_line(&lines->via.array.ptr[i], err);
	} else if (strcmp(type, "stats") == 0) {
		mp_get_num(ev, "memory", &d);
		mp_get_num(ev, "cpu", &d2);
		p->memory = d > 0 ? (uint64_t)d : 0;
		if (!p->bar) {
			print_lead(p, ev, ts);
			printf("stats: memory %s, cpu %.1fs\n", fmt_bytes(p->memory, s1, sizeof s1), d2);
		}
	} else {
		print_lead(p, ev, ts);
		if (strcmp(type, "started") == 0)
			print_started(p, ev);
		else if (strcmp(type, "phase") == 0) {
			mp_get_str(ev, "name", p->phase, sizeof p->phase);
			printf("%sphase %s%s\n", print_sgr("1;36"), print_safe(p->phase), print_sgr("0"));
		} else if (strcmp(type, "warning") == 0) {
			mp_get_str(ev, "message", s1, sizeof s1);
			mp_get_num(ev, "timeout", &d);
			printf("%sWARNING: %s%s (timeout at %gs)\n", print_sgr("1;33"), print_safe(s1), print_sgr("0"),
			    d);
		} else if (strcmp(type, "finished") == 0)
			print_finished(p, ev);
		else if (strcmp(type, "requeued") == 0) {
			mp_get_str(ev, "reason", s1, sizeof s1);
			printf("%srequeued%s (%s)", print_sgr("1;33"), print_sgr("0"), print_safe(s1));
			if (mp_get_num(ev, "due", &d) && d > 0)
				printf(", retry in %s", print_duration(d - ts, s2, sizeof s2));
			putchar('\n');
		} else if (strcmp(type, "upload") == 0) {
			char b1[32], b2[32];
			mp_get_str(ev, "name", s1, sizeof s1);
			mp_get_num(ev, "bytes", &d);
			mp_get_num(ev, "total", &d2);
			printf("upload %s: %s of %s\n", print_safe(s1), fmt_bytes(d > 0 ? (uint64_t)d : 0, b1, sizeof b1),
			    fmt_bytes(d2 > 0 ? (uint64_t)d2 : 0, b2, sizeof b2));
		} else if (strcmp(type, "dead") == 0) {
			mp_get_str(ev, "reason", s1, sizeof s1);
			mp_get_str(ev, "error", s2, sizeof s2);
			printf("%sdead (%s)%s: %s\n", print_sgr("1;31"), print_safe(s1), print_sgr("0"), print_safe(s2));
			snprintf(p->status, sizeof p->status, "dead");
			p->done = true;
		} else
			printf("%s\n", print_safe(type));
	}
	print_bar(p);
	print_flush();
	return true;
}

/* Decode msgpack bytes and print the event. */
bool
print_event_raw(struct printer *p, const char *buf, size_t len)
{
	msgpack_unpacked u;
	bool printed;

	msgpack_unpacked_init(&u);
	if (!print_unpack(buf, len, &u)) {
		print_bar_clear(p);
		printf("(an event that is not valid msgpack, %zu bytes)\n", len);
		msgpack_unpacked_destroy(&u);
		return true;
	}
	printed = print_event(p, &u.data);
	msgpack_unpacked_destroy(&u);
	return printed;
}

/* The exit code that reflects a job status. */
int
print_status_exit(const char *status)
{
	static const struct {
		const char *name;
		int code;
	} codes[] = {
		{ "succeeded", EXIT_OK }, { "failed", EXIT_FAILED }, { "timed_out", EXIT_TIMED_OUT },
		{ "oom_killed", EXIT_OOM }, { "cancelled", EXIT_CANCELLED }, { "error", EXIT_ERROR },
		{ "dead", EXIT_DEAD },
	};

	for (size_t i = 0; status != NULL && i < sizeof codes / sizeof codes[0]; i++)
		if (strcmp(status, codes[i].name) == 0)
			return codes[i].code;
	return EXIT_ERROR;
}

/* Print a result map for people, or as JSON. */
void
print_result(const msgpack_object *res, bool json)
{
	const msgpack_object *arts = mp_get(res, "artifacts"), *tail = mp_get(res, "log_tail");
	const msgpack_object *meta = mp_get(res, "meta");
	char id[ID_MAX + 1] = "?", status[32] = "?", worker[128] = "?", err[1024] = "", buf[64];
	double code = -1, duration = 0, attempt = 0, dropped = 0;

	if (json) {
		mp_json(stdout, res);
		putchar('\n');
		print_flush();
		return;
	}
	mp_get_str(res, "id", id, sizeof id);
	mp_get_str(res, "status", status, sizeof status);
	mp_get_str(res, "worker", worker, sizeof worker);
	mp_get_str(res, "error", err, sizeof err);
	mp_get_num(res, "exit_code", &code);
	mp_get_num(res, "duration", &duration);
	mp_get_num(res, "attempt", &attempt);
	mp_get_num(res, "dropped_lines", &dropped);
	printf("job %s: %s%s%s\n", print_safe(id), print_sgr(strcmp(status, "succeeded") ? "1;31" : "1;32"),
	    print_safe(status), print_sgr("0"));
	printf("  exit code   %g\n", code);
	printf("  duration    %s\n", print_duration(duration, buf, sizeof buf));
	printf("  worker      %s (attempt %g)\n", print_safe(worker), attempt);
	if (err[0] != '\0')
		printf("  error       %s\n", print_safe(err));
	if (arts != NULL && arts->type == MSGPACK_OBJECT_ARRAY) {
		printf("  artifacts   %u\n", arts->via.array.size);
		for (uint32_t i = 0; i < arts->via.array.size; i++) {
			const msgpack_object *a = &arts->via.array.ptr[i];
			char name[1024] = "?", sha[80] = "?";
			double size = 0;
			mp_get_str(a, "name", name, sizeof name);
			mp_get_str(a, "sha256", sha, sizeof sha);
			mp_get_num(a, "size", &size);
			printf("    %s  %s  sha256 %s\n", print_safe(name), fmt_bytes((uint64_t)size, buf, sizeof buf),
			    print_safe(sha));
			if (mp_get_str(a, "url", name, sizeof name)) {
				const msgpack_object *up = mp_get(a, "uploaded");
				bool ok = up != NULL && up->type == MSGPACK_OBJECT_BOOLEAN && up->via.boolean;
				printf("      %s %s\n", ok ? "uploaded to" : "NOT uploaded to", print_safe(name));
			}
		}
	}
	if (dropped > 0)
		printf("  dropped     %g log lines\n", dropped);
	if (meta != NULL && meta->type == MSGPACK_OBJECT_MAP) {
		printf("  meta        ");
		mp_json(stdout, meta);
		putchar('\n');
	}
	if (tail != NULL && tail->type == MSGPACK_OBJECT_ARRAY && tail->via.array.size > 0) {
		printf("  log tail\n");
		for (uint32_t i = 0; i < tail->via.array.size; i++) {
			const msgpack_object *l = &tail->via.array.ptr[i];
			if (l->type == MSGPACK_OBJECT_STR) {
				printf("    ");
				print_text(l->via.str.ptr, l->via.str.size);
				putchar('\n');
			}
		}
	}
	print_flush();
}

/* Start a JSON document. */
void
print_json_begin(struct jbuf *jb)
{
	msgpack_sbuffer_init(&jb->sb);
	msgpack_packer_init(&jb->pk, &jb->sb, msgpack_sbuffer_write);
}

/* Print the document as one line of JSON and free it. */
void
print_json_end(struct jbuf *jb)
{
	msgpack_unpacked u;
	size_t off = 0;

	msgpack_unpacked_init(&u);
	if (msgpack_unpack_next(&u, jb->sb.data, jb->sb.size, &off) == MSGPACK_UNPACK_SUCCESS) {
		mp_json(stdout, &u.data);
		putchar('\n');
	}
	msgpack_unpacked_destroy(&u);
	msgpack_sbuffer_destroy(&jb->sb);
	print_flush();
}

/* "k": "v" (nil when v is NULL). */
void
print_json_kv_str(struct jbuf *jb, const char *k, const char *v)
{
	mp_str(&jb->pk, k);
	if (v == NULL)
		msgpack_pack_nil(&jb->pk);
	else
		mp_str(&jb->pk, v);
}

/* A Redis reply as JSON-ready msgpack (strings, integers, arrays, nil). */
void
print_json_reply(struct jbuf *jb, const redisReply *r)
{
	if (r == NULL) {
		msgpack_pack_nil(&jb->pk);
		return;
	}
	switch (r->type) {
	case REDIS_REPLY_STRING:
	case REDIS_REPLY_STATUS:
	case REDIS_REPLY_ERROR:
		mp_strn(&jb->pk, r->str, r->len);
		break;
	case REDIS_REPLY_INTEGER:
		msgpack_pack_int64(&jb->pk, r->integer);
		break;
	case REDIS_REPLY_ARRAY:
		msgpack_pack_array(&jb->pk, r->elements);
		for (size_t i = 0; i < r->elements; i++)
			print_json_reply(jb, r->element[i]);
		break;
	default:
		msgpack_pack_nil(&jb->pk);
		break;
	}
}

/*
 * Unpack one bounded msgpack object into out (re-used).  msgpack-c points
 * strings into the buffer it unpacks, so it unpacks a copy that the zone
 * frees: the object outlives the Redis reply it came from.
 */
bool
print_unpack(const char *buf, size_t len, msgpack_unpacked *out)
{
	char err[ERR_MAX], *copy = xmalloc(len);

	memcpy(copy, buf, len);
	msgpack_unpacked_destroy(out);
	msgpack_unpacked_init(out);
	if (mp_unpack(copy, len, MP_MAX_DEPTH, out, err, sizeof err) != 0 || out->zone == NULL ||
	    !msgpack_zone_push_finalizer(out->zone, free, copy)) {
		free(copy);
		msgpack_unpacked_destroy(out);
		msgpack_unpacked_init(out);
		return false;
	}
	return true;
}
