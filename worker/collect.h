/*
 * collect.h: what the two halves of the artifact collection share, and
 * nothing else includes: collect.c (the slices, the hashing, the
 * deadline, the cancel poll, the list) and walk.c (the walk of the
 * output tree from descriptors, with its caps).  The interface is
 * collect_* in worker.h.
 */
#ifndef COLLECT_H
#define COLLECT_H

#include <dirent.h>
#include <sha2.h>

#include "worker.h"

/* A directory being read: one per level from the output dir down. */
struct collect_dir {
	DIR *d;
	char *rel;		/* its name relative to the output dir ("" for it) */
	int depth;		/* 0 for the output dir */
};

struct collect {
	ev_idle idle;
	ev_timer deadline;
	ev_timer poll;		/* asks Redis whether the job was cancelled */
	struct job *job;
	void (*done)(struct job *);
	dev_t dev;		/* the output dir's filesystem */
	struct collect_dir *dirs;
	size_t ndirs, dirs_cap;
	struct artifact *arts;
	size_t n, cap;
	size_t entries;		/* directory entries seen, of every type */
	uint64_t bytes;		/* st_size of the regular files so far, or more if they grew */
	/* the file being hashed */
	int fd;
	char *name;
	uint64_t size, got;	/* st_size when opened, bytes hashed */
	SHA2_CTX ctx;
	char *buf;
	double timeout;
	double started;		/* now_mono() at the start */
	unsigned long slices;	/* idle calls so far */
	bool finished;
	bool cancelled;
	char error[ERR_MAX];
};

/* Fail the walk with a message (the first one wins). */
void walk_fail(struct collect *co, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Count bytes against collect_max_bytes; false (and the error) when over. */
bool walk_count_bytes(struct collect *co, uint64_t add);
/* Drop the innermost open directory. */
void walk_pop(struct collect *co);
/* One directory entry of the innermost directory: descend, or open a regular file for hashing. */
void walk_entry(struct collect *co, const struct dirent *de);
/* Open the output dir itself as the first directory; -1 when gone (no error) or failed. */
int walk_root(struct collect *co, const char *dir);

#endif
