"""RedisServer: a real redis-server of our own, stopped by pid."""
from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import redis

from .env import free_port
from .ini import StrPath

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


class RedisServer:
    """A redis-server on bind:port (127.0.0.1 and a free port unless told)
    and a unix socket in its directory.

    dirpath: its --dir (made if missing); None makes a temporary one that
    cleanup() removes.  persist=True turns on AOF (appendfsync always) the
    way a production Redis keeps its data, so stop()/start() keeps the queue
    across a restart (the port stays the same).  extra: more redis-server
    arguments; password: --requirepass, and what client() sends.  wrap: an
    argv prefix (ip netns exec NS) to run it under; client() then goes
    through the unix socket, which reaches it from this namespace.
    socket_timeout: client()'s default (None waits as long as a command
    asks).
    """

    def __init__(self, dirpath: Optional[StrPath] = None, *, persist: bool = False, port: Optional[int] = None,
                 extra: Sequence[str] = (), password: Optional[str] = None, bind: str = "127.0.0.1",
                 wrap: Sequence[str] = (), socket_timeout: Optional[float] = 120) -> None:
        self.own_dir = dirpath is None
        self.dir = Path(tempfile.mkdtemp(prefix="debate-redis-", dir="/tmp") if dirpath is None else dirpath)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.sock = str(self.dir / "redis.sock")
        self.fixed_port = port is not None
        self.port = port or free_port()
        self.persist = persist
        self.extra = list(extra)
        self.password = password
        self.bind = bind
        self.wrap = list(wrap)
        self.socket_timeout = socket_timeout
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.started = False

    @property
    def url(self) -> str:
        return f"redis://{self.bind}:{self.port}/0"

    @property
    def unix_url(self) -> str:
        return f"unix://{self.sock}"

    def client(self, **kw: Any) -> "redis.Redis[bytes]":
        """A redis-py client of this server (kw as redis.Redis takes them)."""
        kw.setdefault("password", self.password)
        kw.setdefault("socket_timeout", self.socket_timeout)
        if self.wrap:
            return redis.Redis(unix_socket_path=self.sock, **kw)
        return redis.Redis(host=self.bind, port=self.port, **kw)

    def argv(self) -> list[str]:
        args = [*self.wrap, REDIS_SERVER, "--port", str(self.port), "--bind", self.bind,
                "--unixsocket", self.sock, "--unixsocketperm", "700", "--save", "", "--dir", str(self.dir),
                "--logfile", str(self.dir / "redis.log"), "--daemonize", "no"]
        if self.persist:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--appendonly", "no"]
        if self.password:
            args += ["--requirepass", self.password]
        return args + self.extra

    def start(self) -> "RedisServer":
        """Start it and wait for PING; before the first start a port taken
        meanwhile is traded for another free one (up to 5 tries)."""
        last: Optional[BaseException] = None
        for _ in range(1 if self.fixed_port or self.started else 5):
            self.proc = subprocess.Popen(self.argv(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                         start_new_session=True)
            deadline = time.time() + 20
            while time.time() < deadline and self.proc.poll() is None:
                try:
                    if self.client(socket_timeout=1).ping():
                        self.started = True
                        return self
                except redis.exceptions.RedisError as e:
                    last = e
                time.sleep(0.05)
            self.stop()
            if not self.fixed_port and not self.started:
                self.port = free_port()
        log = self.dir / "redis.log"
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise RuntimeError(f"redis-server did not start: {last}\n{tail}")

    def stop(self) -> None:
        """SIGTERM (redis writes its AOF and exits), SIGKILL after 20 s."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def cleanup(self) -> None:
        """stop(), and remove the directory if it was made here."""
        self.stop()
        if self.own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)
