/*
 * paths.c: the directories a job holds, from its fetch to its end.
 *
 * paths_take() opens the profile and the output with path_open() (no
 * symlink at any depth, nothing but descriptors from builds_root down)
 * and keeps both descriptors open.  From then on the job's directories are
 * those descriptors:
 *
 *  - the container runtime is never given the job's path.  paths_stage()
 *    (mounts.c) bind-mounts each held directory, by its descriptor
 *    (mount("/proc/self/fd/N")), onto a fresh mount point in the worker's
 *    private directory (cid_dir, 0700, outside builds_root), and the
 *    runtime binds that mount point.  podman and dockerd resolve the
 *    source again (stat, EvalSymlinks, runc's own lookup), but every
 *    component of that name is the worker's own: no build can reach it,
 *    so each resolution finds the same mount, which is the held directory.
 *    (The descriptor's magic link itself cannot be the runtime's source:
 *    runc binds from the container's new mount namespace, and the kernel
 *    refuses a bind from a mount of another namespace with EINVAL.)
 *  - collect reads the artifacts through "/proc/self/fd/N".
 *  - paths_release() at the job's end unmounts and closes; a killed
 *    worker's mount points are undone by the next one (mounts_sweep()).
 *
 * Overlaps: no two jobs running in this worker share or nest an output,
 * and no job's profile is, holds or lies inside another running job's
 * output (a job's own profile and output may not nest either).  A running
 * build can rename only what lies inside its own output; held directories
 * never nest with a running output, so nothing a build does changes the
 * chain of parents (path_dir.chain) of any held directory, and a
 * candidate inside a running output finds that output among its parents
 * however the build moves it around.  registry.c makes the same check
 * against the other workers on this host that share builds_root.
 */
#include <string.h>
#include <unistd.h>

#include "mounts.h"

TAILQ_HEAD(held_list, job_paths);
static struct held_list held = TAILQ_HEAD_INITIALIZER(held);

/* Whether a held job's directories overlap the candidate's; names the first clash in err. */
static bool
paths_clash(const struct job_paths *c, const struct job_spec *cs, const struct job_paths *h,
    char *err, size_t errlen)
{
	const char *out = cs->output != NULL ? cs->output : c->output.real;
	const char *prof = cs->profile != NULL ? cs->profile : c->profile.real;

	if (path_nested(&c->output, &h->output))
		snprintf(err, errlen, "output: \"%s\" overlaps running job %s's output", out, h->job_id);
	else if (path_nested(&c->output, &h->profile))
		snprintf(err, errlen, "output: \"%s\" overlaps running job %s's profile", out, h->job_id);
	else if (path_nested(&c->profile, &h->output))
		snprintf(err, errlen, "profile: \"%s\" overlaps running job %s's output", prof, h->job_id);
	else
		return false;
	return true;
}

/* Open both, check them against the jobs running here, hold them. */
int
paths_take(struct job *j, char *err, size_t errlen)
{
	struct job_paths *p = &j->paths, *h;
	struct path_dir rd;	/* builds_root, held for this call: each chain below walks down to it only */
	char e[ERR_MAX];

	p->job_id = j->id;
	memset(&rd, 0, sizeof rd);
	if ((j->spec.profile != NULL || j->spec.output != NULL) &&
	    path_root(wk->conf->builds_root, &rd, e, sizeof e) != 0) {
		snprintf(err, errlen, "%s: %s", j->spec.profile != NULL ? "profile" : "output", e);
		return -1;
	}
	/* No profile (profile_archive) or no output (the worker's own): paths_adopt() holds them later. */
	if (j->spec.profile != NULL && path_open_at(&rd, j->spec.profile, false, &p->profile, e, sizeof e) != 0) {
		snprintf(err, errlen, "profile: %s", e);
		goto fail;
	}
	if (j->spec.output != NULL && path_open_at(&rd, j->spec.output, true, &p->output, e, sizeof e) != 0) {
		snprintf(err, errlen, "output: %s", e);
		goto fail;
	}
	if (path_nested(&p->profile, &p->output)) {
		snprintf(err, errlen, "output: \"%s\" and the profile \"%s\" overlap (one is inside the other)",
		    j->spec.output, j->spec.profile);
		goto fail;
	}
	TAILQ_FOREACH(h, &held, entry) {
		/* Chains as of now: an operator may have moved a held directory since. */
		path_refresh(&h->profile, &rd);
		path_refresh(&h->output, &rd);
		if (paths_clash(p, &j->spec, h, err, errlen))
			goto fail;
	}
	/* Then against the other workers on this host. */
	if (registry_take(j->id, j->spec.profile != NULL ? &p->profile : NULL, j->spec.profile,
	    j->spec.output != NULL ? &p->output : NULL, j->spec.output, &p->reg_handle, err, errlen) != 0)
		goto fail;
	if (j->spec.profile != NULL)
		snprintf(j->profile_path, sizeof j->profile_path, "%s", p->profile.real);
	if (j->spec.output != NULL) {
		snprintf(j->output_path, sizeof j->output_path, "%s", p->output.real);
		snprintf(p->collect_dir, sizeof p->collect_dir, "/proc/self/fd/%d", p->output.fd);
	}
	TAILQ_INSERT_TAIL(&held, p, entry);
	p->held = true;
	path_close(&rd);
	return 0;
fail:
	path_close(&rd);
	path_close(&p->profile);
	path_close(&p->output);
	return -1;
}

/*
 * Hold a directory the worker made itself (outdir_make(): the unpacked
 * profile_archive, or builds_root/jobs/<id>/<attempt>/) as the job's
 * profile or output, from the descriptor it was made with.  Fresh and
 * the job's own, it overlaps nothing another job holds.
 */
int
paths_adopt(struct job *j, bool output, int fd, char *err, size_t errlen)
{
	struct job_paths *p = &j->paths;
	struct path_dir *pd = output ? &p->output : &p->profile;

	if (!p->held) {
		snprintf(err, errlen, "internal error: the job holds no directories");
		return -1;
	}
	path_close(pd);
	if (path_from_fd(fd, NULL, pd, err, errlen) != 0)
		return -1;
	if (output) {
		snprintf(j->output_path, sizeof j->output_path, "%s", pd->real);
		snprintf(p->collect_dir, sizeof p->collect_dir, "/proc/self/fd/%d", pd->fd);
	} else
		snprintf(j->profile_path, sizeof j->profile_path, "%s", pd->real);
	return 0;
}

/* Where the runtime binds from; see worker.h. */
int
paths_stage(struct job *j, struct sandbox_spec *s, char *err, size_t errlen)
{
	struct job_paths *p = &j->paths;

	if (wk->rt.kind == RT_EXEC) {
		/* No container: the build is the operator's own command on the host. */
		s->profile = j->profile_path;
		s->output = j->output_path;
		return 0;
	}
	if (!p->staged) {
		if (mounts_private_ok(j, err, errlen) != 0)
			return -1;
		if (mounts_mount(j, &p->profile, "profile", true, &p->stage_profile, err, errlen) != 0)
			return -1;
		if (mounts_mount(j, &p->output, "output", false, &p->stage_output, err, errlen) != 0) {
			mounts_unmount(&p->stage_profile);
			return -1;
		}
		p->staged = true;
	}
	s->profile = p->stage_profile;
	s->output = p->stage_output;
	return 0;
}

/*
 * The output directory for collect: the held directory under a name no
 * build can change, and a directory rather than a symlink (collect may
 * open it O_NOFOLLOW).  That is the private mount point when it is
 * mounted in our own namespace; else the held descriptor's
 * /proc/self/fd/N.  Exec mode keeps the real path: no container there,
 * the build is the operator's own command.
 */
const char *
paths_collect_dir(struct job *j)
{
	struct job_paths *p = &j->paths;

	if (!p->held || wk->rt.kind == RT_EXEC)
		return j->output_path;
	if (p->staged && mounts_seen_by(getpid(), p->output.fd, p->stage_output))
		return p->stage_output;
	return p->collect_dir;
}

/* Unmount, close, forget. */
void
paths_release(struct job *j)
{
	struct job_paths *p = &j->paths;

	if (p->staged) {
		mounts_unmount(&p->stage_profile);
		mounts_unmount(&p->stage_output);
		p->staged = false;
		mounts_sweep();	/* a worker killed meanwhile: do not wait for our next job */
	}
	if (p->held) {
		TAILQ_REMOVE(&held, p, entry);
		p->held = false;
	}
	registry_drop(p->reg_handle);
	p->reg_handle = 0;
	path_close(&p->profile);
	path_close(&p->output);
}
