/*
 * fuzz_payload.c: libFuzzer harness for the payload gate.  Each input goes
 * through payload_decode() with the default worker.ini limits (builds_root a
 * temporary directory, two images on the allow list), and through
 * mp_precheck(), mp_unpack() and mp_json().
 *
 * Besides crashes, leaks and hangs it aborts on broken promises:
 *  - a job that is accepted obeys every rule of PROTOCOL.md (id pattern,
 *    relative paths without "..", limits within the maxima, an allowed
 *    image, a meta map that decodes again);
 *  - a refusal has a known reason and a message;
 *  - payload_decode agrees with mp_precheck (malformed, too deep);
 *  - whatever mp_precheck accepts, msgpack-c unpacks as exactly one object
 *    of exactly those bytes.
 *
 * Built and run by tests/fuzz/run.
 */
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "debate.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct config cfg;
static FILE *devnull;
static char root[4096];

/* Abort with a message: libFuzzer saves the input as a crash. */
#define PROMISE(cond)                                                          \
	do {                                                                   \
		if (!(cond)) {                                                 \
			fprintf(stderr, "fuzz_payload: broken promise: %s (%s:%d)\n", #cond, __FILE__, \
			    __LINE__);                                         \
			abort();                                               \
		}                                                              \
	} while (0)

/* Remove the temporary builds_root at exit (a crash leaves it in TMPDIR). */
static void
fuzz_cleanup(void)
{
	rmdir(root);
	config_free(&cfg);
	if (devnull != NULL)
		fclose(devnull);
}

static void
fuzz_init(void)
{
	const char *tmp = getenv("TMPDIR");

	config_defaults(&cfg);
	snprintf(root, sizeof root, "%s/debate-fuzz-root.XXXXXX", tmp && *tmp ? tmp : "/tmp");
	if (mkdtemp(root) == NULL) {
		perror("mkdtemp");
		abort();
	}
	free(cfg.builds_root);
	cfg.builds_root = xstrdup(root);
	strv_split(&cfg.images, "localhost/other:1 docker.io/library/archlinux:latest", " ");
	devnull = fopen("/dev/null", "w");
	if (devnull == NULL)
		abort();
	atexit(fuzz_cleanup);
}

/* A path payload_decode accepted: relative, no "..", no NUL, within the lengths. */
static void
check_path(const char *p)
{
	size_t n;
	char *dup, *tok, *save;

	PROMISE(p != NULL);
	n = strlen(p);
	PROMISE(n > 0 && n <= 1024);
	PROMISE(p[0] != '/');
	dup = xstrdup(p);
	for (tok = strtok_r(dup, "/", &save); tok != NULL; tok = strtok_r(NULL, "/", &save)) {
		PROMISE(strcmp(tok, "..") != 0);
		PROMISE(strlen(tok) <= NAME_MAX);
	}
	free(dup);
}

static void
check_accepted(const struct job_spec *js)
{
	char err[ERR_MAX];

	PROMISE(id_valid(js->id, strlen(js->id)));
	check_path(js->profile);
	check_path(js->output);
	PROMISE(js->memory >= (6ULL << 20) && js->memory <= cfg.max_memory);
	PROMISE(isfinite(js->cpus) && js->cpus >= 0.01 && js->cpus <= cfg.max_cpus);
	PROMISE(isfinite(js->timeout) && js->timeout > 0 && js->timeout <= cfg.max_timeout);
	PROMISE(isfinite(js->warning) && js->warning >= 0 && js->warning <= js->timeout);
	PROMISE(js->retries >= 0 && js->retries <= 10);
	PROMISE(!js->has_epoch || (js->source_date_epoch >= 0 && js->source_date_epoch <= 253402300799LL));
	PROMISE(js->image != NULL);
	PROMISE(strcmp(js->image, cfg.image) == 0 || strv_has(&cfg.images, js->image));
	PROMISE((js->meta == NULL) == (js->meta_len == 0));
	if (js->meta != NULL) {
		unsigned char b = (unsigned char)js->meta[0];
		PROMISE((b >= 0x80 && b <= 0x8f) || b == 0xde || b == 0xdf);
		PROMISE(mp_precheck(js->meta, js->meta_len, MP_MAX_DEPTH, err, sizeof err) == 0);
	}
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *buf = (const char *)data;
	struct job_spec js;
	char err[ERR_MAX], perr[ERR_MAX];
	enum refusal r;
	int pre;

	if (devnull == NULL)
		fuzz_init();

	/* The gate. */
	err[0] = '\0';
	r = payload_decode(buf, size, &cfg, &js, err, sizeof err);
	if (r == REFUSE_NONE)
		check_accepted(&js);
	else {
		PROMISE(r > REFUSE_NONE && r <= REFUSE_LIMIT);
		PROMISE(err[0] != '\0');
		PROMISE(strcmp(refusal_name(r), "unknown") != 0);
		PROMISE(js.id[0] == '\0' || id_valid(js.id, strlen(js.id)));
	}
	payload_free(&js);

	/* The pre-check, and msgpack-c behind it. */
	pre = mp_precheck(buf, size, MP_MAX_DEPTH, perr, sizeof perr);
	PROMISE(pre == 0 || pre == -1 || pre == -2);
	if (size <= cfg.max_payload) {
		if (pre == -1)
			PROMISE(r == REFUSE_MALFORMED);
		if (pre == -2)
			PROMISE(r == REFUSE_TOO_DEEP);
	}
	if (pre == 0) {
		msgpack_unpacked u;
		size_t off = 0;

		/* Exactly one object, exactly these bytes. */
		msgpack_unpacked_init(&u);
		PROMISE(msgpack_unpack_next(&u, buf, size, &off) == MSGPACK_UNPACK_SUCCESS);
		PROMISE(off == size);
		msgpack_unpacked_destroy(&u);

		msgpack_unpacked_init(&u);
		PROMISE(mp_unpack(buf, size, MP_MAX_DEPTH, &u, err, sizeof err) == 0);
		mp_json(devnull, &u.data);
		msgpack_unpacked_destroy(&u);
	}
	return 0;
}
