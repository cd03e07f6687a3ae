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

/* "{ns}:kind:id" into buf (job, progress, log, result, active, worker). */
const char *
keys_id(const struct keys *k, const char *kind, const char *id, char *buf, size_t len)
{
	snprintf(buf, len, "{%s}:%s:%s", k->ns, kind, id);
	return buf;
}
