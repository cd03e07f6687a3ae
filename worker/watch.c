/*
 * watch.c: watching a job's build while it runs: the cidfile the runtime
 * writes, the container's memory cgroup (OOM kills, memory and CPU) and
 * the periodic stats events.  In exec mode the child itself is read from
 * /proc instead.  Nothing here changes a job's state: what it finds goes
 * into j->cid, j->cg and j->oom, which job_end() reads.
 */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "job.h"

#define WATCH_OOM_POLL 0.05	/* seconds between reads of oom_kill without a notification */

/*
 * The container id the runtime wrote into the job's cidfile, into buf;
 * NULL while there is none (not written yet, or not a whole id).
 */
static const char *
watch_read_cid(const struct job *j, char *buf, size_t len)
{
	ssize_t n;
	int fd;

	if ((fd = open(j->cidfile, O_RDONLY | O_CLOEXEC)) < 0)
		return NULL;
	n = read(fd, buf, len - 1);
	close(fd);
	if (n < 0)
		return NULL;
	buf[n] = '\0';
	buf[strcspn(buf, " \r\n")] = '\0';
	return strlen(buf) >= 12 ? buf : NULL;
}

/*
 * The container to stop or remove: its id from the cidfile once the
 * runtime wrote it, else its name.  The name is the job's, not the
 * attempt's: after a take-over it may be the new owner's container,
 * which a fenced-off worker must not touch.
 */
const char *
watch_container(const struct job *j, char *buf, size_t len)
{
	const char *cid = watch_read_cid(j, buf, len);

	return cid != NULL ? cid : j->cname;
}

/* Memory and CPU of an exec-mode child from /proc (the child alone). */
static int
watch_proc_stats(pid_t pid, uint64_t *mem, double *cpu)
{
	char path[64], buf[1024], *p;
	unsigned long long ut, st, rss;
	ssize_t n;
	int fd;

	snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
	if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
		return -1;
	n = read(fd, buf, sizeof buf - 1);
	close(fd);
	if (n <= 0 || (p = strrchr(buf, ')')) == NULL)
		return -1;
	buf[n] = '\0';
	/* After "pid (comm)": state is field 3; utime 14, stime 15, rss 24. */
	if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu %*d %*d %*d %*d %*d %*d %*u %*u %llu",
	    &ut, &st, &rss) != 3)
		return -1;
	*cpu = (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
	*mem = rss * (uint64_t)sysconf(_SC_PAGESIZE);
	return 0;
}

/* Read the OOM kill counter; say so the first time it shows a kill. */
static void
watch_oom_poll(struct job *j)
{
	if (cgroup_oom_check(&j->cg) && !j->oom) {
		j->oom = true;
		log_notice("job %s: the kernel killed a process of the build for memory", j->id);
	}
}

/* Periodic stats; the emit's answer also tells us about a cancel. */
static void
watch_stats_cb(EV_P_ ev_timer *w, int revents)
{
	struct job *j = w->data;
	struct event_msg ep;
	uint64_t mem = 0;
	double cpu = 0;

	(void)loop;
	(void)revents;
	if (j->cg_found) {
		cgroup_stats(&j->cg, &mem, &cpu);
		watch_oom_poll(j);
	} else if (wk->rt.kind == RT_EXEC)
		watch_proc_stats(j->pid, &mem, &cpu);
	event_begin(j, &ep, "stats", 3);
	mp_kv_double(&ep.pk, "elapsed", now_mono() - j->started_mono);
	mp_kv_uint(&ep.pk, "memory", mem);
	mp_kv_double(&ep.pk, "cpu", cpu);
	event_send(j, &ep, "stats", RQ_DROP, NULL);
}

/* The memory cgroup says something happened: an OOM kill, or its removal. */
static void
watch_oom_cb(EV_P_ ev_io *w, int revents)
{
	struct job *j = w->data;

	(void)revents;
	watch_oom_poll(j);
	if (j->reaped)
		ev_io_stop(loop, w);
}

/*
 * Wait for the cidfile the runtime writes when it creates the container,
 * then find its memory cgroup and arm the OOM watch.  The count read when
 * arming catches a kill that came before.
 */
static void
watch_cid_cb(EV_P_ ev_timer *w, int revents)
{
	struct job *j = w->data;
	char buf[128];
	const char *cid;
	int efd;

	(void)revents;
	if (j->reaped) {
		ev_timer_stop(loop, w);
		return;
	}
	if (j->cg_found) {
		/* Polling the counter: no eventfd (no write access to the cgroup). */
		watch_oom_poll(j);
		if (cgroup_gone(&j->cg))
			ev_timer_stop(loop, w);
		return;
	}
	if ((cid = watch_read_cid(j, buf, sizeof buf)) == NULL)
		goto again;
	snprintf(j->cid, sizeof j->cid, "%s", cid);	/* our container exists */
	if (cgroup_find(cid, &j->cg) != 0)
		goto again;
	j->cg_found = true;
	ev_timer_stop(loop, w);
	if ((efd = cgroup_watch_oom(&j->cg)) >= 0) {
		ev_io_init(&j->oom_io, watch_oom_cb, efd, EV_READ);
		j->oom_io.data = j;
		ev_io_start(loop, &j->oom_io);
	} else {
		/*
		 * Registering an eventfd needs write access to the cgroup (a
		 * worker that runs the runtime through sudo has none): read the
		 * world-readable counter every WATCH_OOM_POLL while the container
		 * lives instead, as well as at each stats tick and at the end.
		 */
		log_debug("job %s: no OOM notification from %s; polling its oom_kill counter", j->id,
		    j->cg.mem_dir);
		w->repeat = WATCH_OOM_POLL;
		ev_timer_again(loop, w);
	}
	watch_oom_poll(j);
	log_debug("job %s: container %.12s, cgroup %s", j->id, cid, j->cg.mem_dir);
	return;
again:
	/* Poll fast at first (the container appears within a second), then slower. */
	w->repeat = now_mono() - j->started_mono < 2 ? 0.02 : 0.25;
	ev_timer_again(loop, w);
}

/* Prepare a new job's watchers (nothing runs yet). */
void
watch_init(struct job *j)
{
	ev_timer_init(&j->stats_timer, watch_stats_cb, 0, 0);
	ev_timer_init(&j->cid_timer, watch_cid_cb, 0.02, 0.02);
	j->stats_timer.data = j->cid_timer.data = j;
	j->cg.event_fd = j->cg.watch_fd = -1;
}

/* A child was spawned: look for its container (containers only). */
void
watch_start(struct job *j)
{
	if (wk->rt.kind == RT_EXEC)
		return;
	ev_timer_stop(EV_DEFAULT, &j->cid_timer);
	ev_timer_set(&j->cid_timer, 0.02, 0.02);
	ev_timer_start(EV_DEFAULT, &j->cid_timer);
}

/* The build runs: stats every stats_interval, across a conflict's second run. */
void
watch_stats_start(struct job *j)
{
	ev_timer_set(&j->stats_timer, wk->conf->stats_interval, wk->conf->stats_interval);
	ev_timer_start(EV_DEFAULT, &j->stats_timer);
}

/* The child is gone: the last read of the OOM counter; the cgroup watch ends. */
void
watch_end(struct job *j)
{
	ev_timer_stop(EV_DEFAULT, &j->cid_timer);
	if (j->cg_found && cgroup_oom_check(&j->cg))
		j->oom = true;
	ev_io_stop(EV_DEFAULT, &j->oom_io);
}

/* Forget the container of a first run that failed on a name conflict. */
void
watch_reset(struct job *j)
{
	j->oom = false;
	cgroup_close(&j->cg);
	j->cg_found = false;
}

/* Stop every watcher of this file (stats, cidfile, OOM). */
void
watch_stop(struct job *j)
{
	ev_timer_stop(EV_DEFAULT, &j->stats_timer);
	ev_timer_stop(EV_DEFAULT, &j->cid_timer);
	ev_io_stop(EV_DEFAULT, &j->oom_io);
}
