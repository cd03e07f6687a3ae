/*
 * image.c: the build image, checked when the worker starts and built from
 * the configured Containerfile when it is missing, one build at a time
 * per host (an flock on a lock file).  These calls block, which is fine
 * before the loop starts: nothing else is running yet.  During the run
 * the build itself is the check: it runs with --pull=never, and a missing
 * image ends the job as an error that names it.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <unistd.h>

#include "worker.h"

/* /run/lock is shared by the whole host even when systemd gives each
 * worker instance a private /tmp (PrivateTmp=yes); /tmp is the fallback. */
#define IMAGE_LOCK "/run/lock/debate-image-build.lock"
#define IMAGE_LOCK_FALLBACK "/tmp/debate-image-build.lock"

/*
 * With runtime = auto, docker comes first as in the old sandbox, but only
 * when its daemon answers: a docker client without a daemon falls back to
 * podman.  Start-up only.
 */
void
image_pick_runtime(const struct config *c, struct runtime *rt)
{
	struct strv argv = { 0 };
	struct config tmp;
	char err[ERR_MAX];
	int st;

	if (strcmp(c->runtime, "auto") != 0 || rt->kind != RT_DOCKER)
		return;
	sandbox_base_argv(c, rt, &argv);
	strv_push(&argv, "version");
	strv_push(&argv, "--format={{.Server.Version}}");
	st = proc_run_sync(argv.v, NULL, 0);
	strv_free(&argv);
	if (WIFEXITED(st) && WEXITSTATUS(st) == 0)
		return;
	tmp = *c;
	tmp.runtime = (char *)(uintptr_t)"podman";
	runtime_free(rt);
	if (runtime_detect(&tmp, rt, err, sizeof err) == 0) {
		log_notice("docker's daemon does not answer; using podman");
		return;
	}
	tmp.runtime = (char *)(uintptr_t)"docker";
	runtime_detect(&tmp, rt, err, sizeof err);
	log_warn("docker's daemon does not answer and podman is not installed; builds will fail until it does");
}

/* Whether the runtime has image. */
static bool
image_exists(const struct config *c, const struct runtime *rt, const char *image)
{
	struct strv argv = { 0 };
	int st;

	sandbox_base_argv(c, rt, &argv);
	strv_push(&argv, "image");
	strv_push(&argv, "inspect");
	strv_push(&argv, "--format={{.Id}}");
	strv_push(&argv, image);
	st = proc_run_sync(argv.v, NULL, 0);
	strv_free(&argv);
	return WIFEXITED(st) && WEXITSTATUS(st) == 0;
}

/* Make sure image is there, building it if we know how. */
int
image_ensure(const struct config *c, const struct runtime *rt, const char *image, char *err, size_t errlen)
{
	struct strv argv = { 0 };
	char *out = NULL, *dir, *slash;
	int lock, st;

	if (rt->kind == RT_EXEC || image_exists(c, rt, image))
		return 0;
	if (c->containerfile == NULL || access(c->containerfile, R_OK) != 0) {
		snprintf(err, errlen, "image %s is missing and no readable [sandbox] containerfile builds it%s%s",
		    image, c->containerfile ? ": " : "", c->containerfile ? c->containerfile : "");
		return -1;
	}
	/* One image build per host: others wait here, then find it built. */
	if ((lock = open(IMAGE_LOCK, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644)) < 0)
		lock = open(IMAGE_LOCK_FALLBACK, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
	if (lock >= 0)
		flock(lock, LOCK_EX);
	if (image_exists(c, rt, image)) {
		if (lock >= 0)
			close(lock);
		return 0;
	}
	log_notice("building image %s from %s (this takes a while)", image, c->containerfile);
	dir = xstrdup(c->containerfile);
	slash = strrchr(dir, '/');
	if (slash != NULL)
		*slash = '\0';
	sandbox_base_argv(c, rt, &argv);
	strv_push(&argv, "build");
	strv_push(&argv, "--tag");
	strv_push(&argv, image);
	strv_push(&argv, "--file");
	strv_push(&argv, c->containerfile);
	strv_push(&argv, slash ? dir : ".");
	st = proc_run_sync(argv.v, &out, 4096);
	strv_free(&argv);
	free(dir);
	if (lock >= 0)
		close(lock);
	if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
		snprintf(err, errlen, "building image %s failed: %.300s", image, out ? out : "");
		free(out);
		return -1;
	}
	free(out);
	log_notice("image %s built", image);
	return 0;
}
