/*
 * regline.c: one line of a worker's file in the host's registry of held
 * directories (registry.c), and the overlap check against it.
 *
 *	<ns> <job id> <o|p> <dev>:<ino> <dev>:<ino> ...
 *
 * The directory the job holds (its output, o, or its profile, p), then
 * each directory above it up to "/", as path_chain() found them when the
 * job took them.  Whole chains, so that a directory above builds_root
 * (after builds_root's symlink was pointed elsewhere) is still found.
 */
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "worker.h"

/* The line of a job's directory, newline included; see worker.h. */
char *
regline_format(const char *ns, const char *job_id, char kind, const struct path_dir *pd, size_t *len)
{
	char *line, *p;

	/* ns and id are [A-Za-z0-9_.-]; each dev:ino is at most 41 bytes */
	line = p = xmalloc(strlen(ns) + strlen(job_id) + 5 + pd->depth * 42 + 2);
	p += sprintf(p, "%s %s %c", ns, job_id, kind);
	for (size_t k = 0; k < pd->depth; k++) {
		*p++ = ' ';
		p = fmt_uint(p, (uint64_t)pd->chain[k].dev);
		*p++ = ':';
		p = fmt_uint(p, (uint64_t)pd->chain[k].ino);
	}
	*p++ = '\n';
	*p = '\0';
	*len = (size_t)(p - line);
	return line;
}

/* One "<dev>:<ino>", decimal digits only (strtoull: sscanf took 6% of a 32-worker fleet's CPU). */
static bool
regline_id(const char *tok, struct path_id *id)
{
	unsigned long long dev, ino;
	char *end;

	if (!isdigit((unsigned char)tok[0]))
		return false;
	errno = 0;
	dev = strtoull(tok, &end, 10);
	if (*end != ':' || !isdigit((unsigned char)end[1]))
		return false;
	ino = strtoull(end + 1, &end, 10);
	if (*end != '\0' || errno == ERANGE)
		return false;
	id->dev = (dev_t)dev;
	id->ino = (ino_t)ino;
	return true;
}

/* Parse "dev:ino dev:ino ..." into pd's chain; false on anything else. */
static bool
regline_chain(char *s, struct path_dir *pd)
{
	char *tok, *save = NULL;
	size_t cap = 16;

	pd->fd = -1;
	pd->depth = 0;
	pd->chain = xcalloc(cap, sizeof *pd->chain);
	pd->real[0] = '\0';
	for (tok = strtok_r(s, " ", &save); tok != NULL; tok = strtok_r(NULL, " ", &save)) {
		if (pd->depth >= PATH_MAX / 2)
			break;
		if (pd->depth == cap) {
			cap *= 2;
			pd->chain = xrealloc(pd->chain, cap * sizeof *pd->chain);
		}
		if (!regline_id(tok, &pd->chain[pd->depth]))
			break;
		pd->depth++;
	}
	if (tok != NULL || pd->depth == 0) {
		free(pd->chain);
		pd->chain = NULL;
		pd->depth = 0;
		return false;
	}
	return true;
}

/* The candidate's directories against one line of another worker's file; see worker.h. */
bool
regline_clash(char *line, const char *wid, const struct regline_want *w)
{
	char *lns, *ljob, *lkind, *save = NULL;
	struct path_dir held;
	bool clash = false;

	if ((lns = strtok_r(line, " ", &save)) == NULL || (ljob = strtok_r(NULL, " ", &save)) == NULL ||
	    (lkind = strtok_r(NULL, " ", &save)) == NULL || (strcmp(lkind, "o") != 0 && strcmp(lkind, "p") != 0) ||
	    !regline_chain(save, &held))
		return false;
	/* The same job elsewhere is its stale attempt, not another job. */
	if (strcmp(lns, w->ns) == 0 && strcmp(ljob, w->job_id) == 0) {
		path_close(&held);
		return false;
	}
	if (w->out != NULL && path_nested(w->out, &held)) {
		snprintf(w->err, w->errlen, "output: \"%s\" overlaps running job %s's %s (on worker %s, this host)",
		    w->out_name, ljob, *lkind == 'o' ? "output" : "profile", wid);
		clash = true;
	} else if (w->prof != NULL && *lkind == 'o' && path_nested(w->prof, &held)) {
		snprintf(w->err, w->errlen, "profile: \"%s\" overlaps running job %s's output (on worker %s, this host)",
		    w->prof_name, ljob, wid);
		clash = true;
	}
	free(held.chain);
	return clash;
}
