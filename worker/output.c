/*
 * output.c: a build's stdout and stderr.
 *
 * Lines are split as they arrive (a line longer than LINE_MAX_BYTES is
 * cut into pieces), made valid UTF-8, kept in the job's tail ring,
 * matched against the phase patterns, and packed straight into the batch
 * of the next `log` event (lines_sent counts the lines accepted for
 * publishing).  A batch goes out when it is full or its oldest line is
 * log_batch_interval old.  Past log_max_lines, or while the outbox is
 * over outbox_max, lines are counted as dropped instead: a flood neither
 * stalls the build (the pipe is always read) nor grows our memory.
 *
 * Invariant: what leaves output_split() is valid UTF-8 of at most
 * LINE_MAX_BYTES bytes.  A piece of a long line ends on a character
 * boundary (utf8_cut), counted after sanitizing, so an ill-formed byte
 * that becomes the 3 bytes of U+FFFD still fits; a character the pipe
 * has only half delivered waits in `partial` for the rest.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "job.h"

/*
 * A batch's timer is due.  While an event of the job is still in flight
 * (event.c sends them one at a time) the batch keeps growing instead, up
 * to log_batch_lines (a batch never holds more): a slow or refusing Redis
 * then gets fewer, fuller events, not a queue of small ones.  A full
 * batch, the end of a stream and a phase change flush at once.
 */
static void
output_due(struct outstream *os)
{
	if (event_busy(os->job) && os->batch_n < (uint32_t)wk->conf->log_batch_lines) {
		if (!ev_is_active(&os->flush_timer)) {
			ev_timer_set(&os->flush_timer, wk->conf->log_batch_interval, 0);
			ev_timer_start(EV_DEFAULT, &os->flush_timer);
		}
		return;
	}
	output_flush(os);
}

/* The batch timer: the oldest line waited long enough. */
static void
output_timer_cb(EV_P_ ev_timer *w, int revents)
{
	(void)loop;
	(void)revents;
	output_due(w->data);
}

/* Send the batch as one log event (or count it dropped). */
void
output_flush(struct outstream *os)
{
	struct job *j = os->job;
	struct event_msg ep;

	ev_timer_stop(EV_DEFAULT, &os->flush_timer);
	if (os->batch_n == 0)
		return;
	if (event_backlog() > wk->conf->outbox_max) {
		j->lines_sent -= os->batch_n;
		j->lines_dropped += os->batch_n;
		j->dropped_unreported += os->batch_n;
		wk->m.lines_dropped += os->batch_n;
	} else {
		event_begin(j, &ep, "log", j->dropped_unreported ? 3 : 2);
		mp_kv_str(&ep.pk, "stream", os->name);
		mp_str(&ep.pk, "lines");
		msgpack_pack_array(&ep.pk, os->batch_n);
		msgpack_sbuffer_write(&ep.sb, os->batch.data, os->batch.size);
		if (j->dropped_unreported) {
			mp_kv_uint(&ep.pk, "dropped", j->dropped_unreported);
			j->dropped_unreported = 0;
		}
		event_send(j, &ep, "log", RQ_DROP, NULL);
		wk->m.lines_published += os->batch_n;
	}
	msgpack_sbuffer_clear(&os->batch);
	os->batch_n = 0;
}

/* Add one line to the batch, or count it. */
static void
output_line(struct outstream *os, const char *line, size_t len)
{
	struct job *j = os->job;

	os->on_line(j, os, line, len);
	if (wk->conf->log_max_lines > 0 && j->lines_sent >= (uint64_t)wk->conf->log_max_lines) {
		j->lines_dropped++;
		j->dropped_unreported++;
		wk->m.lines_dropped++;
		return;
	}
	j->lines_sent++;
	mp_strn(&os->batch_pk, line, len);
	if (os->batch_n++ == 0) {
		/* A job's first line goes at the next loop turn (with what this read brought). */
		ev_timer_set(&os->flush_timer, j->lines_sent == 1 ? 0 : wk->conf->log_batch_interval, 0);
		ev_timer_start(EV_DEFAULT, &os->flush_timer);
	}
	if (os->batch_n >= (uint32_t)wk->conf->log_batch_lines)
		output_flush(os);
}

/*
 * One read buffer for every stream: reads are handled to the end inside
 * their callback, so only an unfinished line (under LINE_MAX_BYTES) has
 * to wait in its stream between reads.
 */
static char output_rbuf[LINE_MAX_BYTES + OUT_BUF];

/* Split buf[0..len) into lines; keep an unfinished one in the stream. */
static void
output_split(struct outstream *os, char *buf, size_t len, bool eof)
{
	static char clean[LINE_MAX_BYTES + 1];
	size_t start = 0;

	while (start < len) {
		char *nl = memchr(buf + start, '\n', len - start);
		size_t n = nl ? (size_t)(nl - (buf + start)) : len - start, m = n, k;
		bool more = nl == NULL && !eof;	/* the line goes on past buf */

		if (more && n < LINE_MAX_BYTES)
			break;
		if (!more && m > 0 && buf[start + m - 1] == '\r')
			m--;
		k = utf8_cut(buf + start, m, LINE_MAX_BYTES, more);
		if (k == 0 && m > 0)
			k = 1;	/* cannot happen: a unit is at most 4 bytes (3 once replaced) */
		output_line(os, clean, utf8_sanitize(clean, sizeof clean, buf + start, k));
		if (k >= m)
			start += n + (nl != NULL);	/* the whole line, its \r and \n */
		else
			start += k;	/* a piece: the rest is the next line */
	}
	os->len = len - start;
	if (os->len > 0 && os->partial == NULL)
		os->partial = xmalloc(LINE_MAX_BYTES);	/* not in the job: most builds never need it */
	if (os->len > 0)
		memcpy(os->partial, buf + start, os->len);
}

/* Read a bounded amount; true at EOF (or an error, which ends the stream the same way). */
static bool
output_drain(struct outstream *os)
{
	ssize_t n;

	for (int i = 0; i < 16; i++) {
		if (os->len > 0)
			memcpy(output_rbuf, os->partial, os->len);
		n = read(os->fd, output_rbuf + os->len, OUT_BUF);
		if (n > 0) {
			output_split(os, output_rbuf, os->len + (size_t)n, false);
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		return !(n < 0 && errno == EAGAIN);
	}
	return false;
}

/* The stream is over: its last unfinished line, the batch, the fd. */
static void
output_end(struct outstream *os)
{
	if (os->len > 0)
		memcpy(output_rbuf, os->partial, os->len);
	output_split(os, output_rbuf, os->len, true);
	output_flush(os);
	ev_io_stop(EV_DEFAULT, &os->io);
	close(os->fd);
	os->fd = -1;
	os->eof = true;
}

/* The pipe is readable: read a bounded amount, then let others run. */
static void
output_read_cb(EV_P_ ev_io *w, int revents)
{
	struct outstream *os = w->data;

	(void)loop;
	(void)revents;
	if (output_drain(os)) {
		output_end(os);
		os->on_eof(os->job);
	}
}

/*
 * Give up waiting for EOF (something outside the child holds the pipe):
 * take what is readable now and end the stream as EOF would, without
 * telling the job (the caller does).
 */
void
output_abandon(struct outstream *os)
{
	if (os->eof || os->fd < 0)
		return;
	output_drain(os);
	output_end(os);
}

/* Prepare a stream on fd (which may be -1: then it is at EOF already), telling j through the callbacks. */
void
output_init(struct outstream *os, struct job *j, const char *name, int fd, output_line_cb *on_line,
    output_eof_cb *on_eof)
{
	os->job = j;
	os->name = name;
	os->on_line = on_line;
	os->on_eof = on_eof;
	os->fd = fd;
	os->eof = fd < 0;
	os->len = 0;
	msgpack_sbuffer_init(&os->batch);
	msgpack_packer_init(&os->batch_pk, &os->batch, msgpack_sbuffer_write);
	os->batch_n = 0;
	ev_io_init(&os->io, output_read_cb, fd, EV_READ);
	os->io.data = os;
	ev_timer_init(&os->flush_timer, output_timer_cb, 0, 0);
	os->flush_timer.data = os;
}

/* Start reading. */
void
output_start(struct outstream *os)
{
	if (os->fd >= 0)
		ev_io_start(EV_DEFAULT, &os->io);
}

/* Stop everything and free the batch. */
void
output_close(struct outstream *os)
{
	ev_io_stop(EV_DEFAULT, &os->io);
	ev_timer_stop(EV_DEFAULT, &os->flush_timer);
	if (os->fd >= 0)
		close(os->fd);
	os->fd = -1;
	msgpack_sbuffer_destroy(&os->batch);
	free(os->partial);
	os->partial = NULL;
}
