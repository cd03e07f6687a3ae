"""A tiny FUSE filesystem whose one file fails every read with EIO.

    /usr/bin/python3 eiofs.py MOUNTPOINT

Mounts (in the foreground, until SIGTERM or unmount) a read-only tree:
    good.txt   "hello\\n"
    bad.bin    100 bytes by its size; every read() fails with EIO
so that a test can give the worker an output directory with a real read
error in it (the disk failing under an artifact).  Needs python3-fusepy
and /dev/fuse; run as root.
"""
import errno
import stat
import sys
import time

from fusepy import FUSE, FuseOSError, Operations

FILES = {"/good.txt": b"hello\n", "/bad.bin": None}
NOW = time.time()


class EioFS(Operations):
    def getattr(self, path, fh=None):
        base = {"st_uid": 0, "st_gid": 0, "st_atime": NOW, "st_mtime": NOW, "st_ctime": NOW}
        if path == "/":
            return dict(base, st_mode=stat.S_IFDIR | 0o755, st_nlink=2)
        if path in FILES:
            data = FILES[path]
            return dict(base, st_mode=stat.S_IFREG | 0o644, st_nlink=1,
                        st_size=100 if data is None else len(data))
        raise FuseOSError(errno.ENOENT)

    def readdir(self, path, fh):
        return [".", ".."] + [p[1:] for p in FILES]

    def open(self, path, flags):
        if path not in FILES:
            raise FuseOSError(errno.ENOENT)
        return 0

    def read(self, path, size, offset, fh):
        data = FILES.get(path)
        if data is None:
            raise FuseOSError(errno.EIO)
        return data[offset:offset + size]


if __name__ == "__main__":
    FUSE(EioFS(), sys.argv[1], foreground=True, ro=True, nothreads=True)
