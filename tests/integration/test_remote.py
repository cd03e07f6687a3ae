"""Builds on another host: the profile travels in the job as
profile_archive, the artifacts are PUT back over HTTP.

Two hosts are two network namespaces made here (`ip netns`, one veth pair,
10.231.N.1 and 10.231.N.2 inside them only):
  host A: redis-server and a real nginx (dav_methods PUT, this test's own
          config, prefix and temp dirs), listening on 10.231.N.1 only;
  host B: the worker (and the podman it drives), whose only way to host A
          is that veth: the job carries the profile, the worker's output
          goes to its own builds_root, and the artifacts reach host A only
          through nginx.  (The test itself reads A's files and talks to
          Redis over its unix socket, as an operator on both hosts would.)
Everything (workers, nginx, redis, containers, namespaces, the tmpfs) is
stopped or removed at teardown whatever happens.  Where namespaces cannot
be made, the tests fail and say why: they never skip.
"""
import base64
import hashlib
import io
import os
import random
import re
import signal
import subprocess
import tarfile
import time
import uuid
import zlib
from pathlib import Path
from typing import Dict, List, Optional

import msgpack
import pytest
import redis

from tests.harness import (ENQUEUE_BIN, SLOW, RedisServer, Worker, dead, ini_sections, make_profile, nskey,
                           podman_runtime, stream_events, submit, write_ini)


pytestmark = pytest.mark.containers

EPOCH = 1700000000
ISO_NAME = "debatetest-2023.11.14-x86_64.iso"
NGINX_PORT = 8080
SECRET = "Bearer tok-" + uuid.uuid4().hex
SIG = "sig" + uuid.uuid4().hex


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(list(argv), capture_output=True, text=True, timeout=60)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {p.stderr.strip()}")
    return p


class Hosts:
    """Two network namespaces joined by a veth pair; redis and nginx on A."""

    def __init__(self, tmp: Path):
        sfx = uuid.uuid4().hex[:6]
        self.tmp = tmp
        self.a, self.b = f"dbt-a-{sfx}", f"dbt-b-{sfx}"
        self.va, self.vb = f"dbva{sfx}", f"dbvb{sfx}"
        n = random.randint(1, 254)
        self.ipa, self.ipb = f"10.231.{n}.1", f"10.231.{n}.2"
        self.adir = tmp / "hostA"
        self.bdir = tmp / "hostB"
        self.redis: Optional[RedisServer] = None
        self.nginx_proc: Optional[subprocess.Popen] = None
        self.made: List[str] = []

    def on(self, host: str) -> List[str]:
        """argv prefix running a command in host's network namespace (and nothing else)."""
        return ["nsenter", f"--net=/run/netns/{host}", "--"]

    def make(self) -> None:
        self.adir.mkdir()
        self.bdir.mkdir()
        try:
            for ns in (self.a, self.b):
                sh("ip", "netns", "add", ns)
                self.made.append(ns)
            sh("ip", "link", "add", self.va, "type", "veth", "peer", "name", self.vb)
            sh("ip", "link", "set", self.va, "netns", self.a)
            sh("ip", "link", "set", self.vb, "netns", self.b)
            for ns, dev, ip in ((self.a, self.va, self.ipa), (self.b, self.vb, self.ipb)):
                sh("ip", "-n", ns, "link", "set", "lo", "up")
                sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
                sh("ip", "-n", ns, "link", "set", dev, "up")
        except (RuntimeError, FileNotFoundError, OSError) as e:
            pytest.fail(f"two hosts need network namespaces (ip netns, veth; root or CAP_NET_ADMIN), "
                        f"and they cannot be made here: {e}")
        self.start_redis()
        self.start_nginx()

    # ---- redis on A
    def start_redis(self) -> None:
        self.redis = RedisServer(self.adir / "redis", bind=self.ipa, port=6379, wrap=self.on(self.a),
                                 extra=["--protected-mode", "no"])
        self.sock = self.redis.sock
        self.redis.start()

    def client(self) -> "redis.Redis[bytes]":
        """A client through the unix socket (A's TCP address is not reachable from here)."""
        assert self.redis is not None
        return self.redis.client()

    @property
    def redis_url(self) -> str:
        assert self.redis is not None
        return self.redis.url

    # ---- nginx on A
    def start_nginx(self) -> None:
        d = self.adir / "nginx"
        for sub in ("www/up", "tmp/body", "tmp/proxy", "tmp/fastcgi", "tmp/uwsgi", "tmp/scgi", "logs"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        self.www = d / "www"
        self.access_log = d / "logs" / "access.log"
        conf = d / "nginx.conf"
        conf.write_text(f"""
user root;
worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/logs/error.log info;
events {{ worker_connections 64; }}
http {{
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    log_format hdrs '$request_method $uri auth="$http_authorization" digest="$http_content_digest" '
                    'len=$content_length status=$status';
    access_log {self.access_log} hdrs;
    client_max_body_size 0;
    server {{
        listen {self.ipa}:{NGINX_PORT};
        root {d}/www;
        location /up/ {{
            dav_methods PUT;
            create_full_put_path on;
            dav_access user:rw group:r all:r;
        }}
    }}
}}
""")
        self.nginx_proc = subprocess.Popen([*self.on(self.a), "nginx", "-p", str(d), "-e", str(d / "logs/error.log"),
                                            "-c", str(conf)],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                           start_new_session=True)
        deadline = time.time() + 20
        while time.time() < deadline:
            p = subprocess.run([*self.on(self.a), "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                                f"http://{self.ipa}:{NGINX_PORT}/"], capture_output=True, text=True)
            if p.stdout.strip() not in ("", "000"):
                return
            if self.nginx_proc.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError("nginx on host A did not start: " + (d / "logs/error.log").read_text()[-2000:])

    def stop_nginx(self) -> None:
        if self.nginx_proc is not None and self.nginx_proc.poll() is None:
            self.nginx_proc.send_signal(signal.SIGTERM)     # fast shutdown: connections are cut
            try:
                self.nginx_proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.nginx_proc.pid, signal.SIGKILL)
                self.nginx_proc.wait()
        self.nginx_proc = None

    def nginx_running(self) -> bool:
        return self.nginx_proc is not None and self.nginx_proc.poll() is None

    def throttle(self, rate: Optional[str]) -> None:
        """Limit host B's egress (tc tbf), or lift the limit."""
        sh(*self.on(self.b), "tc", "qdisc", "del", "dev", self.vb, "root", check=False)
        if rate:
            sh(*self.on(self.b), "tc", "qdisc", "add", "dev", self.vb, "root", "tbf", "rate", rate,
               "burst", "64kb", "latency", "100ms")

    def teardown(self) -> None:
        self.stop_nginx()
        if self.redis is not None:
            self.redis.stop()
        for ns in self.made:
            sh("ip", "netns", "del", ns, check=False)    # takes its end of the veth with it
        sh("ip", "link", "del", self.va, check=False)


class NsWorker(Worker):
    """A worker started in host B's network namespace."""

    def __init__(self, prefix: List[str], ini: str, env: Dict[str, str], logdir: Path):
        super().__init__(ini, env=env, logdir=logdir, wrap=prefix)
        self.broot: Optional[Path] = None

    def hwm_kib(self) -> int:
        """Peak RSS (VmHWM) of the worker process so far."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise AssertionError("no VmHWM")


@pytest.fixture(scope="module")
def hosts(tmp_path_factory):
    h = Hosts(tmp_path_factory.mktemp("twohosts"))
    try:
        h.make()
        yield h
    finally:
        h.teardown()


class Remote:
    """Workers on host B and what the test needs around them, cleaned up at teardown."""

    def __init__(self, hosts: Hosts, tmp: Path, runtime):
        self.h = hosts
        self.tmp = tmp
        self.rt = runtime
        self.ns = "t" + uuid.uuid4().hex[:10]
        self.r = hosts.client()
        self.workers: List[NsWorker] = []
        self.mounts: List[Path] = []
        if not hosts.nginx_running():
            hosts.start_nginx()

    def ini(self, broot: Path, **worker) -> str:
        w = {"builds_root": str(broot), "concurrency": 1, "heartbeat_interval": 1, "heartbeat_ttl": 3,
             "reaper_interval": 1, "stats_interval": 1, "log_level": "debug", "upload_retry_backoff": 0.5,
             "upload_timeout": 60}
        w.update(worker)
        return write_ini(self.tmp / f"worker-{uuid.uuid4().hex[:6]}.ini",
                         ini_sections(self.h.redis_url, self.ns, broot, queue={"max_payload": "8m"}, worker=w,
                                      sandbox=dict(self.rt.ini, stop_grace=2)))

    def start(self, broot: Optional[Path] = None, **worker) -> NsWorker:
        if broot is None:
            broot = self.h.bdir / f"builds-{uuid.uuid4().hex[:6]}"
            broot.mkdir()
        w = NsWorker(self.h.on(self.h.b), self.ini(broot, **worker), self.rt.env, self.tmp).start()
        w.broot = broot
        self.workers.append(w)
        return w

    def url(self, job_id: str, query: bool = True) -> str:
        return f"http://{self.h.ipa}:{NGINX_PORT}/up/{self.ns}/{job_id}/{{name}}" + (f"?{SIG}=1" if query else "")

    def submit(self, job_id: str, **job) -> str:
        job.setdefault("source_date_epoch", EPOCH)
        job["id"] = job_id
        return submit(self.r, self.ns, **job)

    def result(self, job_id: str, timeout: float = 90) -> dict:
        key = nskey(self.ns, "result", job_id)
        got = self.r.blmove(key, key, int(timeout * SLOW), "RIGHT", "LEFT")    # waits, leaves it there
        assert got is not None, f"no result for {job_id}; logs:\n" + "\n".join(w.log()[-3000:] for w in self.workers)
        return msgpack.unpackb(got)

    def events(self, job_id: str) -> List[dict]:
        return stream_events(self.r, self.ns, job_id)

    def dead(self) -> List[dict]:
        return dead(self.r, self.ns)

    def close(self) -> None:
        for w in self.workers:
            try:
                w.stop(timeout=20)
            except Exception:
                pass
        self.rt.cleanup(self.ns)
        for m in self.mounts:
            subprocess.run(["umount", "-l", str(m)], capture_output=True)
        reports = [str(w.logpath) for w in self.workers if re.search(r"Sanitizer|runtime error:", w.log())]
        assert not reports, "sanitizer reports in " + ", ".join(reports)


@pytest.fixture(scope="module")
def podman_rt():
    return podman_runtime()


@pytest.fixture
def remote(hosts, tmp_path, podman_rt):
    rm = Remote(hosts, tmp_path, podman_rt)
    yield rm
    hosts.throttle(None)
    rm.close()


def tar_gz(members: List[tarfile.TarInfo], datas: Dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.PAX_FORMAT) as t:
        for m in members:
            data = datas.get(m.name)
            if data is not None:
                m.size = len(data)
                t.addfile(m, io.BytesIO(data))
            else:
                t.addfile(m)
    return buf.getvalue()


def profile_tar(tmp: Path, script: Optional[str] = None, **conf) -> bytes:
    """The test profile as a .tar.gz (what --profile-dir would send)."""
    d = tmp / f"client-{uuid.uuid4().hex[:6]}"
    make_profile(d, "prof", **conf)
    if script is not None:
        s = d / "prof" / "airootfs" / "root"
        s.mkdir(parents=True)
        (s / "customize_airootfs.sh").write_text(script)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        t.add(d / "prof", arcname=".")
    return buf.getvalue()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def wait_gone(path: Path, timeout: float = 15) -> None:
    deadline = time.time() + timeout * SLOW
    while path.exists() and time.time() < deadline:
        time.sleep(0.1)
    assert not path.exists(), f"{path} was not removed: {list(path.rglob('*'))[:10]}"


# ---------------------------------------------------------------- the cases

def test_profile_archive_and_upload(remote, tmp_path, hosts):
    """enqueue submit --profile-dir packs it; host B builds it and PUTs the ISO to nginx on A,
    which has the bytes the result's sha256 names; the credentials show nowhere."""
    w = remote.start()
    client = tmp_path / "client"
    make_profile(client, "prof", seconds=0.2)
    job_id = "remote-" + uuid.uuid4().hex[:8]
    ini = write_ini(tmp_path / "enqueue.ini", {"redis": {"url": f"unix://{hosts.sock}"},
                                               "queue": {"namespace": remote.ns, "max_payload": "8m"},
                                               "worker": {"builds_root": str(tmp_path / "not-here")}})
    env = dict(os.environ, UPLOAD_TOKEN=SECRET)
    cp = subprocess.run([ENQUEUE_BIN, "-c", ini, "submit", "--id", job_id, "--epoch", str(EPOCH),
                         "--profile-dir", str(client / "prof"), "--upload", remote.url(job_id),
                         "--upload-header", "Authorization: env:UPLOAD_TOKEN"],
                        capture_output=True, text=True, env=env, timeout=60)
    assert cp.returncode == 0, cp.stderr
    res = remote.result(job_id)
    assert res["status"] == "succeeded", res
    [art] = [a for a in res["artifacts"] if a["name"] == ISO_NAME]
    assert art["uploaded"] is True
    assert art["url"] == f"http://{hosts.ipa}:{NGINX_PORT}/up/{remote.ns}/{job_id}/{ISO_NAME}"
    got = hosts.www / "up" / remote.ns / job_id / ISO_NAME
    assert got.is_file()
    assert sha256_file(got) == art["sha256"]
    assert got.stat().st_size == art["size"]

    # nginx saw the header and the digest of those bytes
    digest = base64.b64encode(bytes.fromhex(art["sha256"])).decode()
    # nginx logs a request after it has answered it: wait for the line.
    deadline = time.time() + 10
    while True:
        lines = [x for x in hosts.access_log.read_text().splitlines() if f"/{job_id}/{ISO_NAME}" in x]
        if lines or time.time() > deadline:
            break
        time.sleep(0.05)
    assert lines, "nginx logged no PUT of the ISO"
    line = lines[-1]
    assert f'auth="{SECRET}"' in line
    assert f'digest="sha-256=:{digest}:"' in line
    assert f"len={art['size']}" in line and "status=201" in line

    ups = [e for e in remote.events(job_id) if e["type"] == "upload"]
    assert ups and ups[-1]["name"] == ISO_NAME and ups[-1]["bytes"] == ups[-1]["total"] == art["size"]
    shown = subprocess.run([ENQUEUE_BIN, "-c", ini, "logs", job_id], capture_output=True, text=True, timeout=30)
    assert f"upload {ISO_NAME}: " in shown.stdout, shown.stdout + shown.stderr
    shown = subprocess.run([ENQUEUE_BIN, "-c", ini, "status", job_id], capture_output=True, text=True, timeout=30)
    assert f"uploaded to {art['url']}" in shown.stdout, shown.stdout + shown.stderr

    # the worker's own dirs go once the upload is done
    jobdir = w.broot / "jobs" / job_id
    wait_gone(jobdir / "1")
    deadline = time.time() + 10
    while list(jobdir.glob("profile.*")) and time.time() < deadline:
        time.sleep(0.1)
    assert list(jobdir.glob("profile.*")) == []

    # credentials: not in the log (debug level), events, result or any argv
    everything = w.log() + repr(remote.events(job_id)) + repr(res)
    assert SECRET.split()[1] not in everything
    assert SIG not in everything


def raw_tar_header(name: str, typeflag: bytes = b"5", size: int = 0) -> bytes:
    h = bytearray(512)
    h[0:len(name)] = name.encode()
    h[100:108] = b"0000755\0"
    h[108:116] = b"0000000\0"
    h[116:124] = b"0000000\0"
    h[124:136] = f"{size:011o}\0".encode()
    h[136:148] = b"00000000000\0"
    h[148:156] = b" " * 8
    h[156:157] = typeflag
    h[257:263] = b"ustar\0"
    h[263:265] = b"00"
    h[148:156] = f"{sum(h):06o}\0 ".encode()
    return bytes(h)


def million_entries() -> bytes:
    """10^6 directory entries (the same "d/", which is allowed again and again): 512 MB of tar, gzip'd."""
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = raw_tar_header("d/") * 2048
    out = [z.compress(block) for _ in range(1000000 // 2048)]
    out.append(z.compress(raw_tar_header("d/") * (1000000 % 2048)))
    out.append(z.compress(b"\0" * 1024))
    out.append(z.flush())
    return b"".join(out)


def gzip_bomb(size: int = 1 << 30) -> bytes:
    """One file of `size` zero bytes: about a thousandth of that gzip'd."""
    z = zlib.compressobj(1, zlib.DEFLATED, 31)
    out = [z.compress(raw_tar_header("bomb", b"0", size))]
    zero = b"\0" * (1 << 20)
    out += [z.compress(zero) for _ in range(size >> 20)]
    out.append(z.compress(b"\0" * 1024))
    out.append(z.flush())
    return b"".join(out)


def test_hostile_archives_dead_lettered(remote, tmp_path, hosts):
    """Each hostile archive is dead-lettered as bad_archive naming its entry; nothing is written
    outside the job's directory, the worker stays up and builds the next good job."""
    canary = "debate-pwned-" + uuid.uuid4().hex[:8]
    outside = tmp_path / "outside"
    outside.mkdir()
    w = remote.start(profile_max_bytes="64m")
    broot = w.broot

    def ti(name, type_=tarfile.REGTYPE, linkname="", **kw):
        t = tarfile.TarInfo(name)
        t.type = type_
        t.linkname = linkname
        for k, v in kw.items():
            setattr(t, k, v)
        return t

    cases = {
        "abs": (tar_gz([ti(f"{outside}/{canary}")], {f"{outside}/{canary}": b"x"}), "an absolute path"),
        "dotdot": (tar_gz([ti(f"a/../../../../../{canary}")], {f"a/../../../../../{canary}": b"x"}), '".."'),
        "symlink-etc": (tar_gz([ti("evil", tarfile.SYMTYPE, "/etc"), ti(f"evil/{canary}")],
                               {f"evil/{canary}": b"x"}), "evil"),
        "hardlink-passwd": (tar_gz([ti("pw", tarfile.LNKTYPE, "/etc/passwd")], {}), "hard link"),
        "device": (tar_gz([ti("null", tarfile.CHRTYPE, devmajor=1, devminor=3)], {}), "device node"),
        "million": (million_entries(), "profile_max_entries"),
        "bomb": (gzip_bomb(), "profile_max_bytes"),
    }
    ids = {}
    for name, (data, _) in cases.items():
        assert len(data) < 8 << 20, (name, len(data))
        ids[name] = remote.submit(f"{name}-{uuid.uuid4().hex[:6]}", profile_archive=data,
                                  upload={"url": remote.url(name)})
    deadline = time.time() + 60 * SLOW
    while len(remote.dead()) < len(cases) and time.time() < deadline:
        time.sleep(0.2)
    dead = {d["id"]: d for d in remote.dead()}
    for name, (_, want) in cases.items():
        d = dead.get(ids[name])
        assert d is not None, f"{name} not dead-lettered:\n{w.log()[-3000:]}"
        assert d["reason"] == "bad_archive", d
        assert "entry \"" in d["error"] and want in d["error"], (name, d["error"])
        assert remote.r.hget(nskey(remote.ns, "job", ids[name]), "state") == b"dead"
    assert "evil" in dead[ids["symlink-etc"]]["error"]
    assert w.alive()

    # nothing outside the jobs' own directories, which are removed again
    assert not (Path("/etc") / canary).exists()
    assert list(outside.iterdir()) == []
    assert not (tmp_path / canary).exists() and not (broot.parent / canary).exists()
    assert sorted(p.name for p in broot.iterdir()) == ["jobs"]
    for job_id in ids.values():
        deadline = time.time() + 20 * SLOW
        while list((broot / "jobs" / job_id).glob("profile.*")) and time.time() < deadline:
            time.sleep(0.1)
        assert list((broot / "jobs" / job_id).glob("profile.*")) == []

    # and it still builds
    good = remote.submit("good-" + uuid.uuid4().hex[:6], profile_archive=profile_tar(tmp_path, seconds=0.1),
                         upload={"url": remote.url("good")})
    res = remote.result(good)
    assert res["status"] == "succeeded", res
    assert all(a["uploaded"] for a in res["artifacts"])


def wait_upload_started(remote, job_id: str, name: str, timeout: float = 60) -> None:
    deadline = time.time() + timeout * SLOW
    while time.time() < deadline:
        for e in remote.events(job_id):
            if e["type"] == "upload" and e["name"] == name and 0 < e["bytes"] < e["total"]:
                return
        time.sleep(0.05)
    raise AssertionError("the upload never got under way:\n" + remote.workers[-1].log()[-3000:])


def test_nginx_stopped_mid_upload(remote, tmp_path, hosts):
    """nginx goes away mid-upload: the PUT is retried and succeeds once it is back; if it stays
    away past upload_timeout, the result is a clear error and the files are kept."""
    hosts.throttle("100mbit")     # 64 MiB take ~5 s: time to pull nginx away mid-way
    script = 'truncate -s 64M "$OUT_DIR/mid.img"\n'
    w = remote.start()
    job_id = remote.submit("retry-" + uuid.uuid4().hex[:6],
                           profile_archive=profile_tar(tmp_path, script, seconds=0.1),
                           upload={"url": remote.url("retry"), "headers": {"Authorization": SECRET}})
    wait_upload_started(remote, job_id, "mid.img")
    hosts.stop_nginx()
    time.sleep(1.5)
    hosts.start_nginx()
    res = remote.result(job_id)
    assert res["status"] == "succeeded", res
    [mid] = [a for a in res["artifacts"] if a["name"] == "mid.img"]
    assert mid["uploaded"] and mid["size"] == 64 << 20
    got = hosts.www / "up" / remote.ns / "retry" / "mid.img"
    assert got.stat().st_size == 64 << 20 and sha256_file(got) == mid["sha256"]
    assert re.search(r"upload of mid\.img to \S+ failed \(.*\); try 2", w.log()), w.log()[-3000:]
    w.stop()
    hosts.throttle(None)

    # nginx stays down: a clear error, the files stay on host B
    w2 = remote.start(upload_timeout=4)
    hosts.stop_nginx()
    job2 = remote.submit("down-" + uuid.uuid4().hex[:6], profile_archive=profile_tar(tmp_path, seconds=0.1),
                         upload={"url": remote.url("down")})
    res = remote.result(job2)
    assert res["status"] == "error", res
    assert re.search(r"upload of \S+ failed after \d+ tries within upload_timeout: .*connect", res["error"]), res
    assert "kept" in res["error"]
    assert not any(a["uploaded"] for a in res["artifacts"])
    kept = w2.broot / "jobs" / job2 / "1" / ISO_NAME
    assert kept.is_file() and sha256_file(kept) == [a for a in res["artifacts"] if a["name"] == ISO_NAME][0]["sha256"]
    assert SECRET.split()[1] not in w.log() + w2.log()


def test_shutdown_abandons_a_long_upload(remote, tmp_path, hosts):
    """A stop that cannot wait (SIGTERM, then drain_timeout) abandons an upload in flight: the
    worker exits and the job goes back on the queue, unrecorded, for another worker."""
    hosts.throttle("8mbit")      # 64 MiB would take over a minute
    w = remote.start(drain_timeout=1)
    job_id = remote.submit("stop-" + uuid.uuid4().hex[:6],
                           profile_archive=profile_tar(tmp_path, 'truncate -s 64M "$OUT_DIR/mid.img"\n', seconds=0.1),
                           upload={"url": remote.url("stop")})
    wait_upload_started(remote, job_id, "mid.img")
    w.signal(signal.SIGTERM)
    assert w.wait(timeout=20) == 0, w.log()[-3000:]
    assert "upload abandoned by the shutdown" in w.log()
    assert remote.r.hget(nskey(remote.ns, "job", job_id), "state") == b"queued", w.log()[-3000:]
    assert remote.r.llen(nskey(remote.ns, "queue")) == 1
    assert remote.r.llen(nskey(remote.ns, "results")) == 0
    assert any(e["type"] == "requeued" and e["reason"] == "drained" for e in remote.events(job_id))


def test_cancel_stops_an_upload_in_flight(remote, tmp_path, hosts):
    """A cancel asked while the artifacts upload (a slow link, 64 MiB) stops
    the upload within a few seconds: the result is `cancelled`, naming the
    upload, and the files stay on the build host."""
    hosts.throttle("8mbit")      # 64 MiB would take over a minute
    w = remote.start()
    job_id = remote.submit("cancel-" + uuid.uuid4().hex[:6],
                           profile_archive=profile_tar(tmp_path, 'truncate -s 64M "$OUT_DIR/mid.img"\n', seconds=0.1),
                           upload={"url": remote.url("cancel")})
    wait_upload_started(remote, job_id, "mid.img")
    asked = time.time()
    remote.r.hset(nskey(remote.ns, "cancel"), job_id, str(asked))
    res = remote.result(job_id, timeout=30)
    assert res["status"] == "cancelled", res
    assert "cancelled while uploading" in res["error"] and "kept" in res["error"], res
    assert time.time() - asked < 15, "the cancel took too long to stop the upload"
    [mid] = [a for a in res["artifacts"] if a["name"] == "mid.img"]
    assert not mid["uploaded"]
    kept = w.broot / "jobs" / job_id / "1" / "mid.img"
    assert kept.is_file() and kept.stat().st_size == 64 << 20
    hosts.throttle(None)
    assert w.alive()


def test_worker_lost_mid_build_requeues_archive_job(remote, tmp_path, hosts):
    """A worker killed (SIGKILL) mid-build: the reaper puts the profile_archive job (a bin
    field, which Redis's cmsgpack cannot read) back as queued and counts the loss; another
    worker builds it, uploads, and keeps its output (keep_outputs = yes)."""
    w1 = remote.start()
    job_id = remote.submit("lost-" + uuid.uuid4().hex[:6], profile_archive=profile_tar(tmp_path, seconds=5),
                           upload={"url": remote.url("lost")})
    w1.wait_log(rf"job {job_id}: started")
    os.kill(w1.pid, signal.SIGKILL)
    w1.proc.wait()
    w2 = remote.start(keep_outputs=True)
    res = remote.result(job_id, timeout=60)
    assert res["status"] == "succeeded" and res["attempt"] == 2, res
    assert all(a["uploaded"] for a in res["artifacts"])
    kept = w2.broot / "jobs" / job_id / "2" / ISO_NAME     # keep_outputs = yes
    time.sleep(0.5)
    assert kept.is_file() and sha256_file(kept) == res["artifacts"][0]["sha256"]
    assert remote.r.hget(nskey(remote.ns, "job", job_id), "lost") == b"1"
    assert any(e["type"] == "requeued" and e["reason"] == "worker_lost" for e in remote.events(job_id)), \
        w2.log()[-3000:]


@pytest.mark.slow
def test_2gib_artifact_streams_with_small_rss(remote, tmp_path, hosts):
    """A 2 GiB artifact (sparse where the build makes it, 2 GiB of bytes on the wire and at
    nginx) is hashed and uploaded with the worker's peak RSS under 32 MiB."""
    w = remote.start(upload_timeout=600)
    script = 'truncate -s 2G "$OUT_DIR/big.img"\n'
    job_id = remote.submit("big-" + uuid.uuid4().hex[:6], profile_archive=profile_tar(tmp_path, script, seconds=0.1),
                           upload={"url": remote.url("big")})
    res = remote.result(job_id, timeout=600)
    assert res["status"] == "succeeded", res
    [big] = [a for a in res["artifacts"] if a["name"] == "big.img"]
    assert big["size"] == 2 << 30 and big["uploaded"]
    got = hosts.www / "up" / remote.ns / "big" / "big.img"
    try:
        assert got.stat().st_size == 2 << 30
        h = hashlib.sha256()
        zero = b"\0" * (1 << 20)
        for _ in range(2048):
            h.update(zero)
        assert big["sha256"] == h.hexdigest()
        assert sha256_file(got) == big["sha256"]
    finally:
        got.unlink(missing_ok=True)
    hwm = w.hwm_kib()
    print(f"worker peak RSS while hashing and uploading 2 GiB: {hwm} KiB")
    assert hwm < 32 * 1024, f"worker peak RSS {hwm} KiB"


def test_full_disk_job_goes_to_worker_with_room(remote, tmp_path, hosts):
    """A worker whose builds_root (a 4 MiB tmpfs) is below min_free takes no job, says so in its
    heartbeat and in `enqueue workers`; the job waits for a worker with room, which builds it."""
    small = hosts.bdir / f"small-{uuid.uuid4().hex[:6]}"
    small.mkdir()
    sh("mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(small))
    remote.mounts.append(small)
    full = remote.start(small, min_free="16m")
    full.wait_log(r"below min_free")
    wid = None
    deadline = time.time() + 10 * SLOW
    while wid is None and time.time() < deadline:
        ids = [x.decode() for x in remote.r.zrange(nskey(remote.ns, "workers"), 0, -1)]
        wid = ids[0] if ids else None
        time.sleep(0.1)
    assert wid, full.log()
    hb = remote.r.hgetall(nskey(remote.ns, "worker", wid))
    assert hb[b"disk_low"] == b"1" and int(hb[b"disk_free"]) < 16 << 20, hb
    ini = write_ini(tmp_path / "enq.ini", {"redis": {"url": f"unix://{hosts.sock}"},
                                           "queue": {"namespace": remote.ns}})
    out = subprocess.run([ENQUEUE_BIN, "-c", ini, "workers"], capture_output=True, text=True, timeout=30)
    assert "disk low" in out.stdout, out.stdout + out.stderr

    job_id = remote.submit("room-" + uuid.uuid4().hex[:6], profile_archive=profile_tar(tmp_path, seconds=0.1),
                           upload={"url": remote.url("room")})
    time.sleep(3 * SLOW)
    assert remote.r.llen(nskey(remote.ns, "queue")) == 1, "the full worker took the job"
    assert list(small.iterdir()) == [] or list(small.iterdir()) == [small / "jobs"]
    roomy = remote.start(min_free="16m")
    res = remote.result(job_id)
    assert res["status"] == "succeeded", res
    assert res["worker"] != wid
    assert full.alive() and roomy.alive()


def test_disk_room_again_takes_the_job(remote, tmp_path, hosts):
    """A worker whose builds_root is below min_free takes the waiting job by itself once room is made
    there (its disk check runs every heartbeat and then asks for a job), without a restart."""
    small = hosts.bdir / f"small-{uuid.uuid4().hex[:6]}"
    small.mkdir()
    sh("mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(small))
    remote.mounts.append(small)
    filler = small / "filler"
    filler.write_bytes(b"\0" * (6 << 20))
    w = remote.start(small, min_free="4m")
    w.wait_log(r"below min_free")
    job_id = remote.submit("again-" + uuid.uuid4().hex[:6], profile_archive=profile_tar(tmp_path, seconds=0.1),
                           upload={"url": remote.url("again")})
    time.sleep(2 * SLOW)
    assert remote.r.llen(nskey(remote.ns, "queue")) == 1, "a worker without room took the job"
    filler.unlink()
    w.wait_log(r"bytes free again")
    res = remote.result(job_id, timeout=30)
    assert res["status"] == "succeeded", res
    assert w.alive()
