/*
 * keys.c: the names of every Redis key, under one {namespace} hash tag so
 * that a Redis Cluster serves them all from one slot.
 */
#include <stdlib.h>
#include <string.h>

#include "debate.h"

/* Build the fixed key names for namespace ns. */
void
keys_init(struct keys *k, const char *ns)
{
	k->ns = xstrdup(ns);
	k->prefix = xasprintf("{%s}:", ns);
	k->queue = xasprintf("{%s}:queue", ns);
	k->events = xasprintf("{%s}:events", ns);
	k->results = xasprintf("{%s}:results", ns);
	k->dead = xasprintf("{%s}:dead", ns);
	k->workers = xasprintf("{%s}:workers", ns);
	k->cancel = xasprintf("{%s}:cancel", ns);
	k->delayed = xasprintf("{%s}:delayed", ns);
	k->reaper_lock = xasprintf("{%s}:reaper", ns);
	k->control = xasprintf("{%s}:control", ns);
}

/* Free the names. */
void
keys_free(struct keys *k)
{
	free(k->ns);
	free(k->prefix);
	free(k->queue);
	free(k->events);
	free(k->results);
	free(k->dead);
	free(k->workers);
	free(k->cancel);
	free(k->delayed);
	free(k->reaper_lock);
	free(k->control);
	memset(k, 0, sizeof *k);
}

/*
 * "{ns}:kind:id" into buf (job, progress, log, result, active, worker),
 * cut to len - 1 bytes as snprintf would; without snprintf, which was a
 * tenth of the worker's instructions per job (ten keys a job).
 */
const char *
keys_id(const struct keys *k, const char *kind, const char *id, char *buf, size_t len)
{
	const char *parts[] = { k->prefix, kind, ":", id };
	size_t at = 0;

	if (len == 0)
		return buf;
	for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
		size_t n = strlen(parts[i]);
		if (n > len - 1 - at)
			n = len - 1 - at;
		memcpy(buf + at, parts[i], n);
		at += n;
	}
	buf[at] = '\0';
	return buf;
}
