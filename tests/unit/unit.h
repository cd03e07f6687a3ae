/*
 * unit.h: small helpers the cmocka programs share.
 */
#ifndef UNIT_H
#define UNIT_H

#include <ftw.h>
#include <stdio.h>
#include <sys/stat.h>

/* Remove one entry of a tree being walked depth first. */
static inline int
unit_rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path);
}

/* Remove the temporary tree dir, symlinks not followed. */
static inline int
unit_rmtree(const char *dir)
{
	return nftw(dir, unit_rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

#endif
