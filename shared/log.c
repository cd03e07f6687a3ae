/*
 * log.c: one line per message on stderr.
 *
 * Under systemd (JOURNAL_STREAM names our stderr) each line starts with
 * "<N>" so journald keeps the level; elsewhere a timestamp and the level
 * name lead.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "debate.h"

static const char *log_name = "debate";
static enum log_level log_level = LOG_INFO;
static bool log_journal;

/* Whether stderr is the journal stream systemd gave us. */
static bool
log_is_journal(void)
{
	const char *js = getenv("JOURNAL_STREAM");
	unsigned long long dev, ino;
	struct stat st;

	if (js == NULL || sscanf(js, "%llu:%llu", &dev, &ino) != 2)
		return false;
	if (fstat(STDERR_FILENO, &st) != 0)
		return false;
	return (unsigned long long)st.st_dev == dev && (unsigned long long)st.st_ino == ino;
}

/* Set the program name and level; decide the line format once. */
void
log_init(const char *name, enum log_level level)
{
	log_name = name;
	log_level = level;
	log_journal = log_is_journal();
}

/* Change the level (SIGHUP reload). */
void
log_set_level(enum log_level level)
{
	log_level = level;
}

/* The current level. */
enum log_level
log_get_level(void)
{
	return log_level;
}

/* Parse a level name: error, warning, notice, info, debug. */
int
log_level_parse(const char *s, enum log_level *out)
{
	static const struct {
		const char *name;
		enum log_level level;
	} names[] = {
		{ "error", LOG_ERR }, { "warning", LOG_WARN }, { "warn", LOG_WARN },
		{ "notice", LOG_NOTICE }, { "info", LOG_INFO }, { "debug", LOG_DEBUG },
	};

	for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
		if (strcasecmp(s, names[i].name) == 0) {
			*out = names[i].level;
			return 0;
		}
	}
	return -1;
}

/* The short name printed for a level. */
static const char *
log_level_name(enum log_level level)
{
	switch (level) {
	case LOG_ERR: return "error";
	case LOG_WARN: return "warning";
	case LOG_NOTICE: return "notice";
	case LOG_INFO: return "info";
	case LOG_DEBUG: return "debug";
	}
	return "?";
}

/* Write one formatted line at level. */
static void
log_vmsg(enum log_level level, const char *fmt, va_list ap)
{
	char line[2048], msg[2048];
	int n, saved = errno;

	if (level > log_level)
		return;
	if (log_journal) {
		n = snprintf(line, sizeof line, "<%d>", (int)level);
	} else {
		/* The date and time to the second, formatted once a second. */
		static char stamp[32];
		static time_t stamp_sec = -1;
		struct timespec ts;
		long ms;
		clock_gettime(CLOCK_REALTIME, &ts);
		if (ts.tv_sec != stamp_sec) {
			struct tm tm;
			gmtime_r(&ts.tv_sec, &tm);
			strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &tm);
			stamp_sec = ts.tv_sec;
		}
		ms = ts.tv_nsec / 1000000;
		n = snprintf(line, sizeof line, "%s.%c%c%cZ %s[%d] %s: ", stamp, (char)('0' + ms / 100),
		    (char)('0' + ms / 10 % 10), (char)('0' + ms % 10), log_name, (int)getpid(),
		    log_level_name(level));
	}
	if (n < 0 || (size_t)n >= sizeof line)
		n = 0;
	/*
	 * Messages quote what builds and Redis said (an error detail, a
	 * container name): as printable UTF-8, so no control byte reaches a
	 * terminal and no newline forges a line of its own in the journal.
	 */
	vsnprintf(msg, sizeof msg, fmt, ap);
	str_printable(line + n, sizeof line - (size_t)n - 1, msg);
	n = (int)strlen(line);
	line[n++] = '\n';
	/* One write per line so concurrent writers do not interleave. */
	(void)!write(STDERR_FILENO, line, (size_t)n);
	errno = saved;
}

/* Log a message at level. */
void
log_msg(enum log_level level, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_vmsg(level, fmt, ap);
	va_end(ap);
}

/* Log and exit 1: only at start-up or on a broken invariant (tmux's fatalx). */
void
fatalx(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_vmsg(LOG_ERR, fmt, ap);
	va_end(ap);
	exit(1);
}

/* fatalx() with strerror(errno) appended. */
void
fatal(const char *fmt, ...)
{
	char buf[1024];
	int saved = errno;
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	fatalx("%s: %s", buf, strerror(saved));
}
