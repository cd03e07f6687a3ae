/*
 * sandbox.c: which container runtime to drive, and the exact argv of
 * every call made to it.  The argv builders are pure functions of the
 * config and the job, so unit tests cover them; job data only ever
 * becomes separate argv elements, never text for a shell.
 */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "worker.h"

/* Find an executable called name on PATH (or name itself with a slash). */
static char *
runtime_which(const char *name)
{
	const char *path = getenv("PATH");
	char *dup, *dir, *save, *cand;

	if (strchr(name, '/') != NULL)
		return access(name, X_OK) == 0 ? xstrdup(name) : NULL;
	if (path == NULL)
		path = "/usr/local/bin:/usr/bin:/bin";
	dup = xstrdup(path);
	for (dir = strtok_r(dup, ":", &save); dir != NULL; dir = strtok_r(NULL, ":", &save)) {
		cand = xasprintf("%s/%s", *dir ? dir : ".", name);
		if (access(cand, X_OK) == 0) {
			free(dup);
			return cand;
		}
		free(cand);
	}
	free(dup);
	return NULL;
}

/*
 * Resolve [sandbox] runtime: auto (docker first, then podman, as the seed
 * did), docker, podman, exec (no container: the benchmark and fast test
 * mode), or a path whose basename says docker or podman.
 */
int
runtime_detect(const struct config *c, struct runtime *rt, char *err, size_t errlen)
{
	const char *want = c->runtime;
	const char *base;

	memset(rt, 0, sizeof *rt);
	if (strcmp(want, "exec") == 0) {
		rt->kind = RT_EXEC;
		return 0;
	}
	if (strcmp(want, "auto") == 0) {
		if ((rt->path = runtime_which("docker")) != NULL)
			rt->kind = RT_DOCKER;
		else if ((rt->path = runtime_which("podman")) != NULL)
			rt->kind = RT_PODMAN;
		else {
			snprintf(err, errlen, "no container runtime found: install podman or docker, "
			    "or set [sandbox] runtime");
			return -1;
		}
	} else {
		if ((rt->path = runtime_which(want)) == NULL) {
			snprintf(err, errlen, "[sandbox] runtime: \"%s\" is not an executable on PATH", want);
			return -1;
		}
		base = strrchr(want, '/') ? strrchr(want, '/') + 1 : want;
		if (strstr(base, "podman") != NULL)
			rt->kind = RT_PODMAN;
		else if (strstr(base, "docker") != NULL)
			rt->kind = RT_DOCKER;
		else {
			snprintf(err, errlen, "[sandbox] runtime: cannot tell whether \"%s\" is docker or podman "
			    "(its name must contain one of them)", want);
			free(rt->path);
			rt->path = NULL;
			return -1;
		}
	}
	/* Rootless podman cannot mount or make loop devices: the seed used sudo. */
	switch (c->sudo) {
	case SUDO_YES: rt->sudo = true; break;
	case SUDO_NO: rt->sudo = false; break;
	case SUDO_AUTO: rt->sudo = rt->kind == RT_PODMAN && geteuid() != 0; break;
	}
	return 0;
}

/* Free what runtime_detect() found. */
void
runtime_free(struct runtime *rt)
{
	free(rt->path);
	rt->path = NULL;
}

/* The runtime's name for events and logs. */
const char *
runtime_name(const struct runtime *rt)
{
	switch (rt->kind) {
	case RT_DOCKER: return "docker";
	case RT_PODMAN: return "podman";
	case RT_EXEC: return "exec";
	}
	return "?";
}

static void sandbox_pushf(struct strv *argv, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* "<ns>-build-<id>": the id is already validated, so this is a safe name. */
void
sandbox_name(const char *ns, const char *job_id, char *buf, size_t len)
{
	snprintf(buf, len, "%s-build-%s", ns, job_id);
}

/*
 * [sudo -n [--preserve-env=NAME,...]] RUNTIME [runtime_args...].  sudo
 * resets the environment; the names in keep (if any) are asked to pass,
 * which sudoers must allow (env_keep, or SETENV), else sudo refuses.
 */
static void
sandbox_prefix(const struct config *c, const struct runtime *rt, const struct strv *keep,
    struct strv *argv)
{
	if (rt->sudo) {
		strv_push(argv, "sudo");
		strv_push(argv, "-n");
		if (keep != NULL && keep->n > 0) {
			char *list = xstrdup(""), *t;
			for (size_t i = 0; i < keep->n; i++) {
				t = xasprintf("%s%s%s", list, i ? "," : "", keep->v[i]);
				free(list);
				list = t;
			}
			sandbox_pushf(argv, "--preserve-env=%s", list);
			free(list);
		}
	}
	strv_push(argv, rt->path);
	for (size_t i = 0; i < c->runtime_args.n; i++)
		strv_push(argv, c->runtime_args.v[i]);
}

/* [sudo -n] RUNTIME [runtime_args...] */
void
sandbox_base_argv(const struct config *c, const struct runtime *rt, struct strv *argv)
{
	sandbox_prefix(c, rt, NULL, argv);
}

/* Push "fmt" formatted as one argument. */
static void
sandbox_pushf(struct strv *argv, const char *fmt, ...)
{
	va_list ap;
	char *s;

	va_start(ap, fmt);
	if (vasprintf(&s, fmt, ap) < 0)
		fatalx("out of memory");
	va_end(ap);
	strv_push(argv, s);
	free(s);
}

/*
 * The run command.  --rm lets the runtime remove the container on every
 * normal exit (docker does it in the daemon, podman through conmon's
 * cleanup even if our client dies), so the normal path needs no other
 * call; --cidfile names the container for the cgroup watch; --init gives
 * the build a PID 1 that forwards signals; memory-swap equal to memory
 * makes the memory limit real.
 */
void
sandbox_argv(const struct config *c, const struct runtime *rt, const struct sandbox_spec *s,
    struct strv *argv)
{
	char name[ID_MAX + 128];
	struct strv pass = { 0 };

	strv_free(argv);
	if (rt->kind == RT_EXEC) {
		for (size_t i = 0; i < c->command.n; i++)
			strv_push(argv, c->command.v[i]);
		return;
	}
	/*
	 * env_allow: the names alone go on the argv ("--env=NAME": the
	 * runtime client takes the value from its own environment, which is
	 * ours), so no value shows in ps or /proc/PID/cmdline.
	 */
	for (size_t i = 0; i < c->env_allow.n; i++)
		if (getenv(c->env_allow.v[i]) != NULL)
			strv_push(&pass, c->env_allow.v[i]);
	sandbox_prefix(c, rt, &pass, argv);
	sandbox_name(s->ns, s->job_id, name, sizeof name);
	strv_push(argv, "run");
	strv_push(argv, "--rm");
	strv_push(argv, "--init");
	sandbox_pushf(argv, "--name=%s", name);
	sandbox_pushf(argv, "--cidfile=%s", s->cidfile);
	strv_push(argv, "--pull=never");
	strv_push(argv, "--log-driver=none");
	sandbox_pushf(argv, "--label=debate.ns=%s", s->ns);
	sandbox_pushf(argv, "--label=debate.worker=%s", s->worker_id);
	sandbox_pushf(argv, "--label=debate.job=%s", s->job_id);
	sandbox_pushf(argv, "--label=debate.attempt=%ld", s->attempt);
	sandbox_pushf(argv, "--label=debate.expires=%lld", s->expires);
	sandbox_pushf(argv, "--memory=%llu", (unsigned long long)s->memory);
	sandbox_pushf(argv, "--memory-swap=%llu", (unsigned long long)s->memory);
	sandbox_pushf(argv, "--cpus=%.3f", s->cpus);
	if (s->pids > 0)
		sandbox_pushf(argv, "--pids-limit=%ld", s->pids);
	sandbox_pushf(argv, "--network=%s", c->network ? c->network : "none");
	if (c->privileged) {
		/* mkarchiso needs loop devices and mounts; nothing else is confined then. */
		strv_push(argv, "--privileged");
	} else {
		strv_push(argv, "--cap-drop=ALL");
		for (size_t i = 0; i < c->cap_add.n; i++)
			sandbox_pushf(argv, "--cap-add=%s", c->cap_add.v[i]);
		if (c->no_new_privileges)
			strv_push(argv, "--security-opt=no-new-privileges");
	}
	if (c->read_only)
		strv_push(argv, "--read-only");
	strv_push(argv, "--tmpfs=/tmp:exec,mode=1777");
	strv_push(argv, "--tmpfs=/var/tmp:exec,mode=1777");
	if (c->read_only)
		strv_push(argv, "--tmpfs=/run:mode=755");
	sandbox_pushf(argv, "--volume=%s:/build/profile:ro", s->profile);
	sandbox_pushf(argv, "--volume=%s:/build/output:rw", s->output);
	for (size_t i = 0; i < c->mounts.n; i++)
		sandbox_pushf(argv, "--volume=%s", c->mounts.v[i]);
	sandbox_pushf(argv, "--env=SOURCE_DATE_EPOCH=%lld", (long long)s->epoch);
	strv_push(argv, "--env=LC_ALL=C");
	strv_push(argv, "--env=TZ=UTC");
	for (size_t i = 0; i < pass.n; i++)
		sandbox_pushf(argv, "--env=%s", pass.v[i]);
	strv_free(&pass);
	strv_push(argv, s->image);
	for (size_t i = 0; i < c->command.n; i++)
		strv_push(argv, c->command.v[i]);
}

/*
 * The environment of an exec-mode build: ours, less what the allow list
 * does not name of the build's own variables, plus the fixed set and
 * where the profile and output are.
 */
void
sandbox_env(const struct config *c, const struct sandbox_spec *s, char **environ_in,
    struct strv *env)
{
	static const char *keep[] = { "PATH=", "HOME=", "USER=", "LANG=", NULL };

	strv_free(env);
	for (char **e = environ_in; e != NULL && *e != NULL; e++) {
		bool ok = false;
		for (const char **k = keep; *k != NULL; k++)
			ok = ok || strncmp(*e, *k, strlen(*k)) == 0;
		for (size_t i = 0; i < c->env_allow.n && !ok; i++) {
			size_t n = strlen(c->env_allow.v[i]);
			ok = strncmp(*e, c->env_allow.v[i], n) == 0 && (*e)[n] == '=';
		}
		if (ok)
			strv_push(env, *e);
	}
	sandbox_pushf(env, "SOURCE_DATE_EPOCH=%lld", (long long)s->epoch);
	strv_push(env, "LC_ALL=C");
	strv_push(env, "TZ=UTC");
	sandbox_pushf(env, "DEBATE_JOB_ID=%s", s->job_id);
	sandbox_pushf(env, "DEBATE_PROFILE=%s", s->profile);
	sandbox_pushf(env, "DEBATE_OUTPUT=%s", s->output);
	sandbox_pushf(env, "DEBATE_MEMORY=%llu", (unsigned long long)s->memory);
}

/* "stop -t GRACE name": SIGTERM, then SIGKILL after the grace. */
void
sandbox_stop_argv(const struct config *c, const struct runtime *rt, const char *name,
    struct strv *argv)
{
	strv_free(argv);
	sandbox_base_argv(c, rt, argv);
	strv_push(argv, "stop");
	sandbox_pushf(argv, "--time=%ld", (long)(c->stop_grace + 0.5));
	strv_push(argv, name);
}

/*
 * "kill name": SIGKILL to the container's processes by the runtime, which
 * reaches them where a signal to our client (sudo, or a client that
 * ignores it) does not.
 */
void
sandbox_kill_argv(const struct config *c, const struct runtime *rt, const char *name,
    struct strv *argv)
{
	strv_free(argv);
	sandbox_base_argv(c, rt, argv);
	strv_push(argv, "kill");
	strv_push(argv, "--signal=KILL");
	strv_push(argv, name);
}

/* "rm -f name" (also for containers already gone: the runtime says so). */
void
sandbox_rm_argv(const struct config *c, const struct runtime *rt, const char *name,
    struct strv *argv)
{
	strv_free(argv);
	sandbox_base_argv(c, rt, argv);
	strv_push(argv, "rm");
	strv_push(argv, "--force");
	strv_push(argv, name);
}

/* The Go template of one label's value (docker's ps has .Label, podman's .Labels is a map). */
static void
sandbox_label_format(const struct runtime *rt, bool ps, const char *key, char *buf, size_t len)
{
	if (!ps)
		snprintf(buf, len, "{{index .Config.Labels \"%s\"}}", key);
	else if (rt->kind == RT_DOCKER)
		snprintf(buf, len, "{{.Label \"%s\"}}", key);
	else
		snprintf(buf, len, "{{index .Labels \"%s\"}}", key);
}

/*
 * "ps -a --filter label=L --format '{{.ID}} {{.Names}} <debate.worker>'":
 * containers carrying a label, one line each: id, name, worker label.
 * The id is what is removed: a name may pass to another container.
 */
void
sandbox_ps_argv(const struct config *c, const struct runtime *rt, const char *label,
    struct strv *argv)
{
	char lf[64];

	strv_free(argv);
	sandbox_base_argv(c, rt, argv);
	strv_push(argv, "ps");
	strv_push(argv, "--all");
	sandbox_pushf(argv, "--filter=label=%s", label);
	sandbox_label_format(rt, true, "debate.worker", lf, sizeof lf);
	sandbox_pushf(argv, "--format={{.ID}} {{.Names}} %s", lf);
}

/*
 * "inspect --type=container --format='{{.Id}} <debate.ns> <debate.job>'
 * what": the full id of a container (name or id) and whose job it runs.
 */
void
sandbox_inspect_id_argv(const struct config *c, const struct runtime *rt, const char *what,
    struct strv *argv)
{
	char ns[64], job[64];

	strv_free(argv);
	sandbox_base_argv(c, rt, argv);
	strv_push(argv, "inspect");
	strv_push(argv, "--type=container");
	sandbox_label_format(rt, false, "debate.ns", ns, sizeof ns);
	sandbox_label_format(rt, false, "debate.job", job, sizeof job);
	sandbox_pushf(argv, "--format={{.Id}} %s %s", ns, job);
	strv_push(argv, what);
}

/* "inspect --type=container --format=<its debate.worker label> what". */
void
sandbox_inspect_worker_argv(const struct config *c, const struct runtime *rt, const char *what,
    struct strv *argv)
{
	char lf[64];

	strv_free(argv);
	sandbox_base_argv(c, rt, argv);
	strv_push(argv, "inspect");
	strv_push(argv, "--type=container");
	sandbox_label_format(rt, false, "debate.worker", lf, sizeof lf);
	sandbox_pushf(argv, "--format=%s", lf);
	strv_push(argv, what);
}
