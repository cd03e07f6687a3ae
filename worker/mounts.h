/*
 * mounts.h: what paths.c asks of mounts.c, and nothing else includes.
 * The interface of both is paths_* in worker.h.
 */
#ifndef MOUNTS_H
#define MOUNTS_H

#include "job.h"

/* A fresh mount point "<cid_dir>/<id>.<attempt>.<kind>" with dir bound on it; -1 with err. */
int mounts_mount(struct job *j, const struct path_dir *dir, const char *kind, bool ro, char **at, char *err,
    size_t errlen);
/* Undo one mount point made by mounts_mount() and forget it (*at NULL). */
void mounts_unmount(char **at);
/* Whether the mount point at, as the namespace of pid daemon sees it, is the held directory fd. */
bool mounts_seen_by(pid_t daemon, int fd, const char *at);
/* Undo the mount points that dead workers left next to our directory. */
void mounts_sweep(void);
/* Whether the worker's private directory is out of the job's and every build's reach; -1 with err. */
int mounts_private_ok(const struct job *j, char *err, size_t errlen);

#endif
