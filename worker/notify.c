/*
 * notify.c: telling systemd how we are (READY, STATUS, STOPPING,
 * WATCHDOG) through libsystemd's sd_notify.
 *
 * libsystemd and what it links (crypto, compression) cost about a
 * megabyte of resident memory in every worker, and only a worker started
 * by systemd has a NOTIFY_SOCKET to talk to: so the library is loaded
 * with dlopen() when that variable is set, and not at all otherwise.
 */
#include <dlfcn.h>
#include <stdarg.h>
#include <stdlib.h>

#include "worker.h"

static int (*notify_fn)(int, const char *);
static int (*watchdog_fn)(int, uint64_t *);

/* Load libsystemd if systemd is listening. */
void
notify_init(void)
{
	void *h;

	if (getenv("NOTIFY_SOCKET") == NULL)
		return;
	if ((h = dlopen("libsystemd.so.0", RTLD_NOW | RTLD_LOCAL)) == NULL) {
		log_warn("NOTIFY_SOCKET is set but libsystemd cannot be loaded: %s", dlerror());
		return;
	}
	*(void **)&notify_fn = dlsym(h, "sd_notify");
	*(void **)&watchdog_fn = dlsym(h, "sd_watchdog_enabled");
	if (notify_fn == NULL || watchdog_fn == NULL) {
		log_warn("libsystemd has no sd_notify");
		notify_fn = NULL;
		watchdog_fn = NULL;
	}
}

/* Send a formatted state string ("READY=1\nSTATUS=..."). */
void
notify_send(const char *fmt, ...)
{
	va_list ap;
	char *s;

	if (notify_fn == NULL)
		return;
	va_start(ap, fmt);
	if (vasprintf(&s, fmt, ap) < 0)
		s = NULL;
	va_end(ap);
	if (s != NULL) {
		notify_fn(0, s);
		free(s);
	}
}

/* The watchdog interval systemd asked for, in seconds, or 0. */
double
notify_watchdog_interval(void)
{
	uint64_t usec;

	if (watchdog_fn == NULL || watchdog_fn(0, &usec) <= 0)
		return 0;
	return (double)usec / 1e6;
}
