/*
 * cgroup.c: the memory cgroup of a running container, for OOM kills and
 * resource stats, on cgroup v1 and v2 alike.
 *
 * Why the worker looks itself: podman on cgroup v1 reports OOMKilled false
 * even when the kernel killed a process of the build, and mkarchiso then
 * exits 1, not 137.  On v1 the oom_kill counter lives only in the cgroup
 * whose limit was hit and that cgroup disappears shortly after the
 * container exits, so polling alone races: we register an eventfd on
 * memory.oom_control (cgroup.event_control) as soon as the container
 * exists, and read the counter at registration to catch an earlier kill.
 * On v2, memory.events carries oom_kill and inotify tells when it changes.
 *
 * Registering the eventfd needs write access to cgroup.event_control,
 * which a worker driving the runtime through sudo lacks.  The counters
 * themselves are world-readable, so detection never depends on it: the
 * job reads oom_kill (memory.oom_control on v1, memory.events on v2, the
 * latter counting kills in every cgroup below it) at every notification,
 * by polling while the container lives when there is none, at each stats
 * tick and once more at the end, and keeps the highest count seen.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include "worker.h"

#define CG_SEARCH_DEPTH 6

/* Where the cgroup file systems are mounted (the unit test points it at a fake tree). */
const char *cgroup_root = "/sys/fs/cgroup";

/* Whether path is a directory. */
static bool
cg_isdir(const char *path)
{
	struct stat st;

	return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* Read a small file into buf; bytes read or -1. */
static ssize_t
cg_read(const char *dir, const char *file, char *buf, size_t len)
{
	char path[4096];
	ssize_t n;
	int fd;

	snprintf(path, sizeof path, "%s/%s", dir, file);
	if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
		return -1;
	n = read(fd, buf, len - 1);
	close(fd);
	if (n < 0)
		return -1;
	buf[n] = '\0';
	return n;
}

/* The value of "key N" in a flat-keyed cgroup file, or -1. */
static long long
cg_keyed(const char *dir, const char *file, const char *key)
{
	char buf[4096], *p;
	size_t kl = strlen(key);

	if (cg_read(dir, file, buf, sizeof buf) < 0)
		return -1;
	for (p = buf; p != NULL && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL) {
		if (strncmp(p, key, kl) == 0 && p[kl] == ' ')
			return strtoll(p + kl + 1, NULL, 10);
	}
	return -1;
}

/* Breadth-limited search below dir for a directory whose name holds cid. */
static char *
cg_search(const char *dir, const char *cid, int depth)
{
	struct dirent *de;
	char *found = NULL;
	DIR *d;

	if (depth == 0 || (d = opendir(dir)) == NULL)
		return NULL;
	while (found == NULL && (de = readdir(d)) != NULL) {
		char *sub;
		if (de->d_type != DT_DIR || de->d_name[0] == '.')
			continue;
		sub = xasprintf("%s/%s", dir, de->d_name);
		if (strstr(de->d_name, cid) != NULL && strstr(de->d_name, "conmon") != NULL) {
			/* podman's libpod-conmon-<id>.scope: the monitor, not the container. */
			free(sub);
			continue;
		}
		if (strstr(de->d_name, cid) != NULL)
			found = sub;
		else {
			found = cg_search(sub, cid, depth - 1);
			free(sub);
		}
	}
	closedir(d);
	return found;
}

/*
 * Find the container's cgroup: the places docker and podman use with the
 * cgroupfs and systemd drivers first, then a bounded search (rootless
 * podman nests it under the user's slice).
 */
int
cgroup_find(const char *cid, struct cgroup *cg)
{
	static const char *where[] = {
		"libpod_parent/libpod-%s", "docker/%s", "machine.slice/libpod-%s.scope",
		"system.slice/docker-%s.scope", "system.slice/libpod-%s.scope", NULL,
	};
	char memroot[4096], cpuroot[4096], probe[4096];
	char *dir = NULL;

	memset(cg, 0, sizeof *cg);
	cg->event_fd = cg->watch_fd = -1;
	cpuroot[0] = '\0';
	snprintf(memroot, sizeof memroot, "%s/memory", cgroup_root);
	snprintf(probe, sizeof probe, "%s/memory.limit_in_bytes", memroot);
	if (cg_isdir(memroot) && access(probe, F_OK) == 0) {
		/* v1, or hybrid (v1 controllers, v2 for systemd alone). */
		snprintf(cpuroot, sizeof cpuroot, "%s/cpuacct", cgroup_root);
		if (!cg_isdir(cpuroot))
			snprintf(cpuroot, sizeof cpuroot, "%s/cpu,cpuacct", cgroup_root);
	} else {
		snprintf(probe, sizeof probe, "%s/cgroup.controllers", cgroup_root);
		if (access(probe, F_OK) != 0)
			return -1;
		snprintf(memroot, sizeof memroot, "%s", cgroup_root);
		cg->v2 = true;
	}

	for (const char **w = where; *w != NULL && dir == NULL; w++) {
		char rel[512], *cand;
		snprintf(rel, sizeof rel, *w, cid);
		cand = xasprintf("%s/%s", memroot, rel);
		if (cg_isdir(cand))
			dir = cand;
		else
			free(cand);
	}
	if (dir == NULL && (dir = cg_search(memroot, cid, CG_SEARCH_DEPTH)) == NULL)
		return -1;
	cg->mem_dir = dir;
	if (cg->v2)
		cg->cpu_dir = xstrdup(dir);
	else
		cg->cpu_dir = xasprintf("%s%s", cpuroot, dir + strlen(memroot));
	cg->oom_kills = 0;
	return 0;
}

/* Arm the OOM notification; the fd becomes readable when something happens. */
int
cgroup_watch_oom(struct cgroup *cg)
{
	char path[4096], line[64];
	int efd, ofd, cfd;

	if (cg->v2) {
		if ((efd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC)) < 0)
			return -1;
		snprintf(path, sizeof path, "%s/memory.events", cg->mem_dir);
		if (inotify_add_watch(efd, path, IN_MODIFY) < 0) {
			close(efd);
			return -1;
		}
		cg->event_fd = efd;
		return efd;
	}
	snprintf(path, sizeof path, "%s/memory.oom_control", cg->mem_dir);
	if ((ofd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
		return -1;
	snprintf(path, sizeof path, "%s/cgroup.event_control", cg->mem_dir);
	if ((cfd = open(path, O_WRONLY | O_CLOEXEC)) < 0) {
		close(ofd);
		return -1;
	}
	if ((efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) < 0) {
		close(ofd);
		close(cfd);
		return -1;
	}
	snprintf(line, sizeof line, "%d %d", efd, ofd);
	if (write(cfd, line, strlen(line)) < 0) {
		close(efd);
		close(ofd);
		close(cfd);
		return -1;
	}
	close(cfd);
	cg->event_fd = efd;
	cg->watch_fd = ofd;
	return efd;
}

/*
 * Drain the notification and re-read the kill count.
 *
 * On v1 the eventfd fires when the OOM begins, before oom_kill counts the
 * kill, and once more when the cgroup is removed.  So a notification
 * while the cgroup still exists is an OOM kill, and when it is gone every
 * notification but the last (the removal) was one.
 */
bool
cgroup_oom_check(struct cgroup *cg)
{
	char drain[4096];
	uint64_t fired = 0, v;
	bool gone, oom = false;
	long long n;

	if (cg->event_fd >= 0 && !cg->v2) {
		while (read(cg->event_fd, &v, sizeof v) == (ssize_t)sizeof v)
			fired += v;
	} else if (cg->event_fd >= 0) {
		while (read(cg->event_fd, drain, sizeof drain) > 0)
			;
	}
	if (cg->mem_dir == NULL)
		return false;
	if (cg->v2)
		n = cg_keyed(cg->mem_dir, "memory.events", "oom_kill");
	else
		n = cg_keyed(cg->mem_dir, "memory.oom_control", "oom_kill");
	gone = n < 0 && !cg_isdir(cg->mem_dir);
	if (n > (long long)cg->oom_kills) {
		cg->oom_kills = (uint64_t)n;
		oom = true;
	}
	if (!cg->v2 && fired > (gone ? 1u : 0u))
		oom = true;
	return oom;
}

/* Whether the cgroup directory is gone (the container was removed). */
bool
cgroup_gone(const struct cgroup *cg)
{
	return cg->mem_dir == NULL || !cg_isdir(cg->mem_dir);
}

/* Memory in use (bytes) and CPU time used (seconds). */
int
cgroup_stats(const struct cgroup *cg, uint64_t *mem, double *cpu)
{
	char buf[64];
	long long us;

	if (cg->mem_dir == NULL)
		return -1;
	if (cg_read(cg->mem_dir, cg->v2 ? "memory.current" : "memory.usage_in_bytes", buf, sizeof buf) < 0)
		return -1;
	*mem = strtoull(buf, NULL, 10);
	if (cg->v2) {
		us = cg_keyed(cg->cpu_dir, "cpu.stat", "usage_usec");
		*cpu = us >= 0 ? (double)us / 1e6 : 0;
	} else if (cg_read(cg->cpu_dir, "cpuacct.usage", buf, sizeof buf) >= 0)
		*cpu = (double)strtoull(buf, NULL, 10) / 1e9;
	else
		*cpu = 0;
	return 0;
}

/* Close the watch and forget the paths. */
void
cgroup_close(struct cgroup *cg)
{
	if (cg->event_fd >= 0)
		close(cg->event_fd);
	if (cg->watch_fd >= 0)
		close(cg->watch_fd);
	free(cg->mem_dir);
	free(cg->cpu_dir);
	memset(cg, 0, sizeof *cg);
	cg->event_fd = cg->watch_fd = -1;
}

/* CPUs this process may run on. */
int
cgroup_host_cpus(void)
{
	cpu_set_t set;

	if (sched_getaffinity(0, sizeof set, &set) == 0)
		return CPU_COUNT(&set);
	return (int)sysconf(_SC_NPROCESSORS_ONLN);
}
