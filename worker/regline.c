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

/* Parse "dev:ino dev:ino ..." into pd's chain; false on anything else. */
static bool
regline_chain(char *s, struct path_dir *pd)
{
	char *tok, *save = NULL;

	pd->fd = -1;
	pd->depth = 0;
	pd->chain = NULL;
	pd->real[0] = '\0';
	for (tok = strtok_r(s, " ", &save); tok != NULL; tok = strtok_r(NULL, " ", &save)) {
		unsigned long long dev, ino;
		char end;

		if (sscanf(tok, "%llu:%llu%c", &dev, &ino, &end) != 2 || pd->depth >= PATH_MAX / 2)
			break;
		pd->chain = xrealloc(pd->chain, (pd->depth + 1) * sizeof *pd->chain);
		pd->chain[pd->depth].dev = (dev_t)dev;
		pd->chain[pd->depth].ino = (ino_t)ino;
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
