"""Pack a local profile directory into a job's profile_archive, as
`enqueue submit --profile-dir` does (enqueue/pack.c).

The archive is a gzip-compressed tar (pax) built in memory.  Entries are
the directory's regular files, directories and symlinks, with names
relative to it; symlinks are stored as symlinks (never followed), owners
as 0, permissions as they are without setuid, setgid and sticky bits,
hard-linked files as separate regular files.  Devices, FIFOs and sockets
are refused here, as the worker would refuse them (bad_archive), before
anything is sent.  Entries are added in name order and the gzip header
carries no time, so the same tree gives the same bytes.
"""
from __future__ import annotations

import errno
import gzip
import io
import os
import stat
import tarfile
from typing import List, Union

from .errors import JobRejected

__all__ = ["pack_profile_dir"]

_MAX_DEPTH = 32                 # pack.c's nftw() descriptors


def _refuse(reason: str, message: str) -> JobRejected:
    return JobRejected("profile_dir", reason, "profile_dir: " + message)


def _entries(root: str, rel: str, depth: int, out: List[str]) -> None:
    """Every name below root/rel, parents before children, in name order."""
    if depth > _MAX_DEPTH:
        raise _refuse("bad_archive", f"{os.path.join(root, rel)}: nested deeper than {_MAX_DEPTH} levels")
    try:
        names = sorted(os.listdir(os.path.join(root, rel) if rel else root))
    except OSError as e:
        raise _refuse("bad_path", f"{os.path.join(root, rel)}: {e.strerror}") from None
    for n in names:
        r = os.path.join(rel, n) if rel else n
        out.append(r)
        try:
            st = os.lstat(os.path.join(root, r))
        except OSError as e:
            raise _refuse("bad_path", f"{os.path.join(root, r)}: {e.strerror}") from None
        if stat.S_ISDIR(st.st_mode):
            _entries(root, r, depth + 1, out)


def _add(tf: tarfile.TarFile, root: str, rel: str) -> None:
    """Add one entry, read without following a symlink."""
    path = os.path.join(root, rel)
    try:
        st = os.lstat(path)
    except OSError as e:
        raise _refuse("bad_path", f"{path}: {e.strerror}") from None
    ti = tarfile.TarInfo(rel)
    ti.mode = stat.S_IMODE(st.st_mode) & 0o777
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    ti.mtime = int(st.st_mtime)
    if stat.S_ISDIR(st.st_mode):
        ti.type = tarfile.DIRTYPE
        tf.addfile(ti)
    elif stat.S_ISLNK(st.st_mode):
        ti.type = tarfile.SYMTYPE
        try:
            ti.linkname = os.readlink(path)
        except OSError as e:
            raise _refuse("bad_path", f"{path}: {e.strerror}") from None
        tf.addfile(ti)
    elif stat.S_ISREG(st.st_mode):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as e:
            why = "became a symlink while packing" if e.errno == errno.ELOOP else e.strerror
            raise _refuse("bad_path", f"{path}: {why}") from None
        with os.fdopen(fd, "rb") as f:
            fst = os.fstat(f.fileno())
            if not stat.S_ISREG(fst.st_mode):
                raise _refuse("bad_archive", f"{path}: not a file, directory or symlink (workers refuse it)")
            ti.type = tarfile.REGTYPE
            ti.size = fst.st_size
            try:
                tf.addfile(ti, f)
            except OSError as e:    # the file shrank while it was read
                raise _refuse("bad_path", f"{path}: {e}") from None
    else:
        raise _refuse("bad_archive", f"{path}: not a file, directory or symlink (workers refuse it)")


def pack_profile_dir(directory: Union[str, "os.PathLike[str]"]) -> bytes:
    """The .tar.gz of directory for profile_archive.  Raises JobRejected
    (field profile_dir): bad_path when it is not a readable directory,
    bad_archive for an entry the worker would refuse."""
    root = os.fspath(directory)
    if not isinstance(root, str):
        raise JobRejected("profile_dir", "wrong_type", "profile_dir: must be a str path")
    try:
        st = os.stat(root)
    except OSError as e:
        raise _refuse("bad_path", f"{root}: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise _refuse("bad_path", f"{root}: not a directory")
    names: List[str] = []
    _entries(root, "", 1, names)
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tf:
            for rel in names:
                _add(tf, root, rel)
    return buf.getvalue()
