"""Operations: the systemd unit, the man pages, `make install`, the metrics
endpoint, a Redis Sentinel failover, journald log levels, sd_notify, and
`enqueue top` on a terminal.

Every process a test starts is stopped by a finalizer (by its pid), also
when the test fails: the worker through the Fleet, Redis and the
sentinels through `procs`, tmux through its private server socket.
"""
import collections
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import msgpack
import pytest
import redis

from tests.harness import (ENQUEUE_BIN, REPO, SLOW, WORKER_BIN, Fleet, RedisServer, Worker, free_port,
                           make_profile, nskey, poll, results, submit, wait_result, write_script)


UNIT = REPO / "scripts" / "debate-worker@.service"
MANPAGES = ["docs/worker.8", "docs/enqueue.1", "docs/worker.ini.5"]


# ---------------------------------------------------------------- systemd unit

def unit_settings(text):
    """{key: [values]} of the unit file's assignments (comments dropped)."""
    out = collections.defaultdict(list)
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        k, _, v = line.partition("=")
        out[k.strip()].append(v.strip())
    return out


def test_unit_file_directives():
    s = unit_settings(UNIT.read_text())
    assert s["Type"] == ["notify"] and s["NotifyAccess"] == ["main"]
    assert s["ExecStart"] == ["/usr/local/sbin/debate-worker -c /etc/debate/worker.ini --id %H-%i"]
    assert s["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert s["KillSignal"] == ["SIGTERM"] and s["KillMode"] == ["mixed"]
    assert s["Restart"] == ["always"] and s["RestartSec"]
    assert s["WatchdogSec"] == ["30"]
    assert s["RuntimeDirectory"] == ["debate-worker-%i"]
    # drain_timeout (60) + stop_grace (10) must fit, with room to hand jobs back.
    assert int(s["TimeoutStopSec"][0]) > 60 + 10
    assert s["ProtectSystem"] == ["strict"] and s["NoNewPrivileges"] == ["no"]
    rw = s["ReadWritePaths"][0].split()
    for p in ("/var/lib/debate", "/var/lib/containers", "/run"):
        assert p in rw or "-" + p in rw, p


def verify_unit(tmp_path, text, extra_env=None, man=True):
    d = tmp_path / "units"
    d.mkdir(exist_ok=True)
    path = d / "debate-worker@.service"
    path.write_text(text)
    env = dict(os.environ, SYSTEMD_LOG_LEVEL="notice", **(extra_env or {}))
    args = ["systemd-analyze", "verify"] + ([] if man else ["--man=no"]) + [str(path)]
    p = subprocess.run(args, capture_output=True, text=True, env=env, timeout=60)
    return p


def test_unit_file_verifies(tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is missing (apt-get install systemd)")
    text = UNIT.read_text().replace("/usr/local/sbin/debate-worker", WORKER_BIN)
    assert WORKER_BIN in text
    p = verify_unit(tmp_path, text, man=False)
    assert p.returncode == 0 and p.stderr.strip() == "" and p.stdout.strip() == "", p.stdout + p.stderr

    # With the man pages it names installed (in a private MANPATH), the
    # Documentation= check passes too.
    subprocess.run(["make", "-s", "-C", str(REPO), "docs"], check=True, capture_output=True, timeout=120)
    mandir = tmp_path / "man"
    for m in MANPAGES:
        sec = m.rsplit(".", 1)[1]
        (mandir / f"man{sec}").mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / m, mandir / f"man{sec}")
    p = verify_unit(tmp_path, text, {"MANPATH": str(mandir)})
    assert p.returncode == 0 and p.stderr.strip() == "", p.stdout + p.stderr

    # A mistake is caught: verify is really looking.
    p = verify_unit(tmp_path, text.replace("Type=notify", "Type=notifyy"), man=False)
    assert p.returncode != 0 or "notifyy" in p.stderr


# ---------------------------------------------------------------- man pages

def test_man_pages_build_and_render():
    p = subprocess.run(["make", "-s", "-C", str(REPO), "docs"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    texts = {}
    for m in MANPAGES:
        path = REPO / m
        assert path.exists() and path.stat().st_mtime >= (REPO / (m + ".scd")).stat().st_mtime
        r = subprocess.run(["man", "--warnings", "-l", str(path)], capture_output=True, text=True,
                           env=dict(os.environ, MANWIDTH="80", MANPAGER="cat", PAGER="cat", LC_ALL="C.UTF-8"),
                           timeout=60)
        assert r.returncode == 0 and r.stderr == "", f"{m}: {r.stderr}"
        assert "NAME" in r.stdout and "SEE ALSO" in r.stdout
        texts[m] = r.stdout

    # worker(8): every long option of the worker and the sections asked for.
    w = texts["docs/worker.8"]
    opts = re.findall(r'\{ "([a-z-]+)", (?:required|no)_argument', (REPO / "worker/main.c").read_text())
    assert len(opts) >= 8
    for o in opts:
        assert f"--{o}" in w, o
    for word in ("SYNOPSIS", "OPTIONS", "SIGNALS", "EXIT STATUS", "ENVIRONMENT", "FILES", "EXAMPLES",
                 "SIGTERM", "SIGHUP", "REDIS_URL", "DEBATE_REDIS_PASSWORD", "JOURNAL_STREAM",
                 "RUNTIME_DIRECTORY", "REDIS SENTINEL", "REDIS CLUSTER", "metrics_listen"):
        assert word in w, word

    # worker.ini(5): every key of shared/config.c, in its section, and [phases].
    ini = texts["docs/worker.ini.5"]
    keys = re.findall(r'KI?\("(\w+)", "(\w+)"', (REPO / "shared/config.c").read_text())
    assert len(keys) > 40
    sections = {}
    for sec in ("redis", "queue", "worker", "sandbox", "phases"):
        m = re.search(rf"^\[{sec}\]\n(.*?)(?=^\S|\Z)", ini, re.M | re.S)
        assert m, f"[{sec}] section missing"
        sections[sec] = m.group(1)
    for sec, key in keys:
        assert re.search(rf"^\s+{key} = ", sections[sec], re.M), f"[{sec}] {key} is not documented"

    # enqueue(1): every subcommand of enqueue's table, and the exit codes.
    e = texts["docs/enqueue.1"]
    cmds = re.findall(r'^\t\{ "([a-z-]+)", \w+, "', (REPO / "enqueue/main.c").read_text(), re.M)
    assert {"submit", "status", "watch", "queue", "workers", "logs", "top"} <= set(cmds)
    for c in cmds:
        assert re.search(rf"^   {re.escape(c)}$", e, re.M), f"enqueue {c} has no section"
    exits = re.search(r"EXIT STATUS\n(.*?)\nENVIRONMENT", e, re.S).group(1)
    for code, word in [(0, "succeeded"), (1, "failed"), (2, "sage"), (3, "timed_out"), (4, "oom_killed"),
                       (5, "cancelled"), (6, "error"), (7, "dead"), (8, "Redis")]:
        assert re.search(rf"^\s+{code}\n\s+.*{word}", exits, re.M | re.S), code


# ---------------------------------------------------------------- make install

def test_make_install(tmp_path):
    dest = tmp_path / "root"
    p = subprocess.run(["make", "-s", "-C", str(REPO), "install", f"DESTDIR={dest}", "PREFIX=/usr"],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    want = ["usr/sbin/debate-worker", "usr/bin/enqueue", "etc/debate/worker.ini",
            "lib/systemd/system/debate-worker@.service", "usr/share/man/man8/worker.8",
            "usr/share/man/man1/enqueue.1", "usr/share/man/man5/worker.ini.5",
            "usr/share/debate/Containerfile", "usr/share/debate/PROTOCOL.md"]
    for w in want:
        assert (dest / w).is_file(), f"{w} not installed"
    assert os.access(dest / "usr/sbin/debate-worker", os.X_OK) and os.access(dest / "usr/bin/enqueue", os.X_OK)
    assert (dest / "etc/debate/worker.ini").stat().st_mode & 0o777 == 0o640
    out = subprocess.run([str(dest / "usr/sbin/debate-worker"), "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and "worker" in out.stdout
    # The unit names the binary where this PREFIX put it.
    s = unit_settings((dest / "lib/systemd/system/debate-worker@.service").read_text())
    assert s["ExecStart"] == ["/usr/sbin/debate-worker -c /etc/debate/worker.ini --id %H-%i"]
    # A second install keeps an edited worker.ini.
    (dest / "etc/debate/worker.ini").write_text("[worker]\nconcurrency = 3\n")
    p = subprocess.run(["make", "-s", "-C", str(REPO), "install", f"DESTDIR={dest}", "PREFIX=/usr"],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0 and "concurrency = 3" in (dest / "etc/debate/worker.ini").read_text()


# ---------------------------------------------------------------- metrics

def scrape(port, path="/metrics", method="GET"):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.status, resp.headers.get("Content-Type"), resp.read().decode()


def parse_metrics(text):
    """{'name{labels}': value} of the exposition's samples."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, value = line.rsplit(" ", 1)
        out[name] = float(value)
    return out


def test_metrics_endpoint(fleet, r, ns, broot, tmp_path):
    make_profile(broot, "ok")
    make_profile(broot, "bad", fail=1)
    cmd = write_script(tmp_path, 'echo building\nif grep -q fail=1 "$DEBATE_PROFILE/test.conf" 2>/dev/null; '
                                 'then echo broken >&2; exit 3; fi\necho x > "$DEBATE_OUTPUT/a.iso"\n')
    port = free_port()
    w = fleet.start(sandbox={"runtime": "exec", "command": cmd},
                    worker={"concurrency": 2, "metrics_listen": f"127.0.0.1:{port}"})
    w.wait_log(r"metrics on http://127\.0\.0\.1:%d/metrics" % port)
    good = submit(r, ns, profile="ok", output="o/1")
    bad = submit(r, ns, profile="bad", output="o/2")
    assert wait_result(r, ns, good, 20)["status"] == "succeeded"
    assert wait_result(r, ns, bad, 20)["status"] == "failed"

    def settled():
        status, ctype, body = scrape(port)
        m = parse_metrics(body)
        ok = (m.get('debate_jobs_total{status="failed"}') == 1 and m.get("debate_running_jobs") == 0
              and m.get("debate_queue_length") == 0)
        return (status, ctype, body, m) if ok else None
    status, ctype, body, m = poll(settled, 10, "the metrics to count both jobs")
    assert status == 200 and ctype.startswith("text/plain")
    assert "# TYPE debate_jobs_total counter" in body
    assert "# TYPE debate_build_duration_seconds histogram" in body
    assert m['debate_jobs_total{status="succeeded"}'] == 1
    assert m['debate_jobs_total{status="failed"}'] == 1
    for st in ("timed_out", "oom_killed", "cancelled", "error"):
        assert m[f'debate_jobs_total{{status="{st}"}}'] == 0
    assert m["debate_build_duration_seconds_count"] == 2
    assert m['debate_build_duration_seconds_bucket{le="+Inf"}'] == 2
    assert m["debate_build_duration_seconds_sum"] >= 0
    buckets = [v for k, v in m.items() if k.startswith("debate_build_duration_seconds_bucket")]
    assert buckets == sorted(buckets)   # cumulative
    assert m["debate_running_jobs"] == 0
    assert m["debate_free_slots"] == 2
    assert "debate_queue_length" in m and m["debate_queue_length"] == 0
    for name in ("debate_redis_reconnects_total", "debate_log_lines_published_total",
                 "debate_log_lines_dropped_total", "debate_events_buffered_bytes",
                 "debate_jobs_refused_total", "debate_results_refused_total"):
        assert name in m, name
    assert m["debate_log_lines_published_total"] >= 2

    with pytest.raises(urllib.error.HTTPError) as e:
        scrape(port, "/nope")
    assert e.value.code == 404
    with pytest.raises(urllib.error.HTTPError) as e:
        scrape(port, "/metrics", method="POST")
    assert e.value.code == 405

    # curl, as an operator would, sees the same.
    if shutil.which("curl"):
        out = subprocess.run(["curl", "-fsS", f"http://127.0.0.1:{port}/metrics"], capture_output=True,
                             text=True, timeout=20)
        assert out.returncode == 0 and 'debate_jobs_total{status="succeeded"} 1' in out.stdout


def listening_ports(pid):
    """TCP ports pid listens on (from /proc: its socket inodes in LISTEN state)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            t = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        m = re.match(r"socket:\[(\d+)\]", t)
        if m:
            inodes.add(m.group(1))
    ports = []
    for f in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(f).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if cols[3] == "0A" and cols[9] in inodes:
                ports.append(int(cols[1].rsplit(":", 1)[1], 16))
    return ports


def test_metrics_off_by_default_and_bad_address(fleet, r, ns, broot, tmp_path):
    make_profile(broot, "p")
    w = fleet.start()
    jid = submit(r, ns, profile="p", output="o")
    assert wait_result(r, ns, jid, 20)["status"] == "succeeded"
    assert listening_ports(w.pid) == []
    assert "metrics on" not in w.log()

    # A bad or taken address is a start-up error, not a silent no-metrics.
    bad = fleet.start(worker={"metrics_listen": "localhost"})
    assert bad.wait(20) == 1 and "metrics_listen" in bad.log()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        taken = fleet.start(worker={"metrics_listen": f"127.0.0.1:{s.getsockname()[1]}"})
        assert taken.wait(20) == 1 and "cannot listen" in taken.log()


# ---------------------------------------------------------------- Sentinel

class Sentinel:
    def __init__(self, d, master_port, procs):
        self.port = free_port()
        self.dir = Path(d)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.conf = self.dir / "sentinel.conf"
        # Sentinel rewrites its config file with what it learns: it must be writable.
        self.conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndaemonize no\ndir {self.dir}\n"
            f"logfile {self.dir / 'sentinel.log'}\n"
            f"sentinel monitor mymaster 127.0.0.1 {master_port} 2\n"
            "sentinel down-after-milliseconds mymaster 1000\n"
            "sentinel failover-timeout mymaster 5000\n"
            "sentinel parallel-syncs mymaster 1\n")
        self.proc = subprocess.Popen(["redis-sentinel", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        procs.append(self.proc)

    def client(self):
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=10, decode_responses=True)

    def master_port(self):
        try:
            a = self.client().execute_command("SENTINEL", "get-master-addr-by-name", "mymaster")
            return int(a[1]) if a else None
        except redis.RedisError:
            return None

    def log(self):
        p = self.dir / "sentinel.log"
        return p.read_text(errors="replace") if p.exists() else ""


def start_redis(d, procs, min_replicas, extra=()):
    # AOF with fsync on every write: what a master acknowledged survives its
    # own restart.  Replication is asynchronous, so a failover needs more.
    # With min-replicas-to-write the old master refuses writes (NOREPLICAS)
    # the moment its replica is promoted and leaves, instead of taking them
    # for the ~10 s until the sentinels demote it, and discarding them then;
    # the worker answers NOREPLICAS by asking the sentinels again and
    # replaying, so no build runs twice.  Without it, the writes of that
    # window are lost, and the lease protocol makes up for it: the jobs run
    # again and each still gets one result.  Producers WAIT (below).
    mr = ["--min-replicas-to-write", "1", "--min-replicas-max-lag", "10"] if min_replicas else []
    srv = RedisServer(d, persist=True, extra=[*mr, "--repl-diskless-sync-delay", "0", *extra])
    srv.start()
    procs.append(srv.proc)
    return srv


@pytest.mark.parametrize("min_replicas", [True, False], ids=["min-replicas", "async"])
def test_sentinel_failover_every_result_once(tmp_path, ns, broot, procs, min_replicas):
    if shutil.which("redis-sentinel") is None:
        pytest.fail("redis-sentinel is missing (apt-get install redis-sentinel)")
    master = start_redis(tmp_path / "master", procs, min_replicas)
    # Two replicas: with min-replicas-to-write 1, the promoted one has the
    # other as its replica at once, so it takes writes while the sentinels
    # are still to demote the old master.
    replica = start_redis(tmp_path / "replica", procs, min_replicas, ["--replicaof", "127.0.0.1", str(master.port)])
    replica2 = start_redis(tmp_path / "replica2", procs, min_replicas,
                           ["--replicaof", "127.0.0.1", str(master.port)])
    for rep in (replica, replica2):
        poll(lambda: rep.client().info("replication").get("master_link_status") == "up", 20,
                 "the replicas to sync")
    sentinels = [Sentinel(tmp_path / f"sentinel{i}", master.port, procs) for i in range(3)]

    def sentinels_ready():
        for s in sentinels:
            try:
                c = s.client()
                if (len(c.execute_command("SENTINEL", "REPLICAS", "mymaster")) < 2
                        or len(c.execute_command("SENTINEL", "SENTINELS", "mymaster")) < 2):
                    return False
            except redis.RedisError:
                return False
        return True
    poll(sentinels_ready, 30, "the sentinels to find the replica and each other", 0.2)

    url = "sentinel://" + ",".join(f"127.0.0.1:{s.port}" for s in sentinels) + "/mymaster"
    fleet = Fleet(tmp_path, url, ns, broot)
    try:
        make_profile(broot, "p")
        runs = tmp_path / "runs.txt"
        cmd = write_script(tmp_path, f'echo "building $DEBATE_JOB_ID"\necho "$DEBATE_JOB_ID" >> {runs}\n'
                                     'sleep 1.5\necho x > "$DEBATE_OUTPUT/a.iso"\n')
        w = fleet.start(sandbox={"runtime": "exec", "command": cmd}, worker={"concurrency": 2})
        w.wait_log(r"sentinels say the master is 127\.0\.0\.1:%d" % master.port)
        w.wait_log(r"redis cmd: connected")

        old = master.client()
        ids = []
        for i in range(8):
            ids.append(submit(old, ns, profile="p", output=f"o/{i}"))
        # A producer waits for the replica to have the jobs: replication is
        # asynchronous, and a job only the old master had is lost with it.
        assert old.execute_command("WAIT", 2, 5000) == 2

        poll(lambda: old.llen(nskey(ns, "results")) >= 2, 30, "the first results")
        assert sentinels[1].client().execute_command("SENTINEL", "FAILOVER", "mymaster") in (True, b"OK", "OK")
        poll(lambda: len({s.master_port() for s in sentinels}) == 1
                 and sentinels[0].master_port() != master.port, 30, "every sentinel to name the new master")
        new_port = sentinels[0].master_port()
        promoted = replica if new_port == replica.port else replica2
        assert new_port == promoted.port
        new = promoted.client()
        assert new.info("replication")["role"] == "master"

        # Jobs queued after the failover go to the new master only; like any
        # producer, retry while it has no replica yet (NOREPLICAS).
        def submit_new(i):
            try:
                return submit(new, ns, profile="p", output=f"o/{i}", id=f"after-{i}-{uuid.uuid4().hex[:6]}")
            except redis.ResponseError as e:
                assert "NOREPLICAS" in str(e) or "EXECABORT" in str(e), e
                return None
        for i in range(8, 11):
            ids.append(poll(lambda: submit_new(i), 30, "the new master to take writes", 0.2))

        def all_results():
            got = [msgpack.unpackb(x) for x in new.lrange(nskey(ns, "results"), 0, -1)]
            return got if {g["id"] for g in got} >= set(ids) else None
        got = poll(all_results, 120, "every result on the new master", 0.5)
        # Settle: nothing more may arrive (a duplicate would show up now).
        time.sleep(3)
        got = [msgpack.unpackb(x) for x in new.lrange(nskey(ns, "results"), 0, -1)]
        counts = collections.Counter(g["id"] for g in got)
        assert counts == collections.Counter(ids), counts
        assert all(g["status"] == "succeeded" for g in got)
        for jid in ids:
            assert new.llen(nskey(ns, "result", jid)) == 1, jid
            assert new.hget(nskey(ns, "job", jid), "state") == b"succeeded"
        assert new.llen(nskey(ns, "dead")) == 0
        assert new.llen(nskey(ns, "queue")) == 0
        wid = w.wait_log(r"worker (\S+) ").group(1)
        poll(lambda: new.llen(nskey(ns, "active", wid)) == 0, 10, "the active list to empty")

        ran = collections.Counter(runs.read_text().split())
        print("builds run per job:", dict(ran))
        assert set(ran) == set(ids)
        if min_replicas:
            # A build runs again only if a write acknowledged just before the
            # promotion had not reached the replica: at most the two running.
            assert sum(ran.values()) - len(ids) <= 2, ran

        # The worker found the new master through the sentinels, and lives on.
        w.wait_log(r"sentinels say the master is 127\.0\.0\.1:%d" % promoted.port, 5)
        assert w.alive()
        # The old master was demoted and follows the new one.
        poll(lambda: old.info("replication")["role"] == "slave", 30, "the old master to be demoted")
    finally:
        fleet.close()


# ---------------------------------------------------------------- journald

def test_journal_stream_level_prefixes(fleet, r, ns, broot, tmp_path):
    make_profile(broot, "p")
    ini = fleet.ini(worker={"log_level": "debug"})
    w = Worker(ini, logdir=tmp_path)
    fleet.workers.append(w)
    w.logpath.touch()          # start() reopens it with O_TRUNC: same inode
    st = os.stat(w.logpath)
    w.env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
    w.start()
    w.wait_log(r"redis cmd: connected")
    jid = submit(r, ns, profile="p", output="o")
    assert wait_result(r, ns, jid, 20)["status"] == "succeeded"
    w.signal(signal.SIGTERM)
    assert w.wait(20) == 0
    lines = w.log().splitlines()
    assert lines and all(re.match(r"<[3-7]>\S", ln) for ln in lines), lines
    assert any(ln.startswith("<5>worker ") for ln in lines)             # the start-up notice
    assert any(ln.startswith("<6>") for ln in lines)                    # info
    assert any(ln.startswith("<7>") for ln in lines)                    # debug
    assert not any(re.search(r"\d{4}-\d\d-\d\dT", ln[:30]) for ln in lines)   # no timestamps

    # JOURNAL_STREAM naming some other file: plain timestamped lines.
    w2 = Worker(ini, logdir=tmp_path, env=dict(os.environ, JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}"))
    fleet.workers.append(w2)
    w2.start()
    w2.wait_log(r"redis cmd: connected")
    first = w2.log().splitlines()[0]
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z worker\[\d+\] notice: worker ", first), first


def test_log_hides_the_redis_password(fleet, tmp_path, ns, broot):
    srv = RedisServer(tmp_path / "redis-auth").start()
    try:
        srv.client().config_set("requirepass", "s3cr/et")
        w = fleet.start(args=["--redis", f"redis://default:s3cr%2Fet@127.0.0.1:{srv.port}/0"])
        w.wait_log(r"redis cmd: connected")
        assert "redis redis://***@127.0.0.1:%d/0," % srv.port in w.log()
        w2 = fleet.start(args=["--redis", f"unix://:s3cr%2Fet@{srv.sock}"])
        w2.wait_log(r"redis cmd: connected")
        assert f"redis unix://***@{srv.sock}?db=0," in w2.log()
        # Both connections work (a unix socket too): jobs run through them.
        c = redis.Redis(host="127.0.0.1", port=srv.port, password="s3cr/et", socket_timeout=60)
        make_profile(broot, "p")
        for _ in range(4):
            assert wait_result(c, ns, submit(c, ns, profile="p", output="o"), 20)["status"] == "succeeded"
        assert {x["worker"] for x in results(c, ns)} <= {w.wait_log(r"worker (\S+) ").group(1),
                                                          w2.wait_log(r"worker (\S+) ").group(1)}
        assert "retrying" not in w.log() + w2.log()
        assert "s3cr" not in w.log() + w2.log()
        for x in (w, w2):
            assert x.stop() == 0
    finally:
        fleet.close()
        srv.stop()


# ---------------------------------------------------------------- sd_notify

class NotifySocket:
    """A unix datagram socket standing in for systemd's notify socket."""

    def __init__(self, path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.msgs = []      # (time, pid, {key: value})

    def poll(self, timeout):
        self.sock.settimeout(timeout)
        try:
            data, anc, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
        except socket.timeout:
            return None
        pid = None
        for level, typ, cdata in anc:
            if level == socket.SOL_SOCKET and typ == socket.SCM_CREDENTIALS:
                pid = struct.unpack("iII", cdata[:12])[0]
        kv = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
        self.msgs.append((time.time(), pid, kv))
        return kv

    def wait(self, key, timeout):
        deadline = time.time() + timeout * SLOW
        for _, pid, kv in self.msgs:
            if key in kv:
                return pid, kv
        while time.time() < deadline:
            kv = self.poll(max(0.05, deadline - time.time()))
            if kv is not None and key in kv:
                return self.msgs[-1][1], kv
        raise AssertionError(f"no {key} within {timeout}s; got {[m[2] for m in self.msgs]}")

    def count(self, key):
        return sum(1 for m in self.msgs if key in m[2])

    def close(self):
        self.sock.close()


def test_sd_notify_ready_watchdog_stopping(tmp_path, ns, broot):
    port = free_port()
    fleet = Fleet(tmp_path, f"redis://127.0.0.1:{port}/0", ns, broot)
    ns_sock = NotifySocket(tmp_path / "notify.sock")
    srv = RedisServer(tmp_path / "redis", port=port)
    try:
        env = dict(os.environ, NOTIFY_SOCKET=ns_sock.path, WATCHDOG_USEC="2000000")
        env.pop("WATCHDOG_PID", None)
        w = Worker(fleet.ini(), env=env, logdir=tmp_path)
        fleet.workers.append(w)
        w.start()
        # Redis is not up yet: pings come from the loop, READY does not.
        w.wait_log(r"redis cmd: .*retrying")
        ns_sock.wait("WATCHDOG", 3)
        assert ns_sock.count("READY") == 0
        t0 = time.time()
        srv.start()
        pid, kv = ns_sock.wait("READY", 15)
        assert kv["READY"] == "1" and pid == w.pid        # from the main process (NotifyAccess=main)
        assert "running" in kv.get("STATUS", "")
        assert re.search(r"redis cmd: connected", w.log())
        assert time.time() >= t0

        # WatchdogSec=2: a ping at least every second.
        n = ns_sock.count("WATCHDOG")
        end = time.time() + 3.2
        while time.time() < end:
            ns_sock.poll(0.2)
        assert ns_sock.count("WATCHDOG") - n >= 2
        assert all(m[1] == w.pid for m in ns_sock.msgs if "WATCHDOG" in m[2])
        status = [m[2]["STATUS"] for m in ns_sock.msgs if "STATUS" in m[2]]
        assert any("redis up" in s for s in status), status

        w.signal(signal.SIGTERM)
        pid, kv = ns_sock.wait("STOPPING", 10)
        assert kv["STOPPING"] == "1" and pid == w.pid
        assert w.wait(20) == 0

        # WATCHDOG_PID naming another process: the watchdog is not ours, no pings.
        ns_sock.msgs.clear()
        env2 = dict(env, WATCHDOG_PID="1")
        w2 = Worker(fleet.ini(), env=env2, logdir=tmp_path)
        fleet.workers.append(w2)
        w2.start()
        ns_sock.wait("READY", 15)
        end = time.time() + 2.5
        while time.time() < end:
            ns_sock.poll(0.2)
        assert ns_sock.count("WATCHDOG") == 0
    finally:
        fleet.close()
        srv.stop()
        ns_sock.close()


# ---------------------------------------------------------------- enqueue top

def enqueue_top_available():
    if not os.access(ENQUEUE_BIN, os.X_OK):
        return False
    p = subprocess.run([ENQUEUE_BIN, "top", "--help"], capture_output=True, text=True, timeout=20)
    return p.returncode == 0 and "top" in p.stdout


def test_enqueue_top_in_tmux(fleet, r, ns, broot, tmp_path):
    if shutil.which("tmux") is None:
        pytest.fail("tmux is missing (apt-get install tmux)")
    assert enqueue_top_available(), "enqueue top --help does not work"
    make_profile(broot, "p")
    cmd = write_script(tmp_path, 'echo "[mkarchiso] INFO: Validating options..."\n'
                                 'echo "[mkarchiso] INFO: Installing packages into airootfs"\n'
                                 'sleep 60\n')
    w = fleet.start(sandbox={"runtime": "exec", "command": cmd, "timeout": 120, "warning": 100},
                    worker={"concurrency": 1})
    first = submit(r, ns, profile="p", output="o/0")
    w.wait_log(rf"job {first}: started")
    for i in range(1, 4):
        submit(r, ns, profile="p", output=f"o/{i}")
    poll(lambda: r.hget(nskey(ns, "job", first), "phase") == b"packages", 20, "the phase")

    sock = f"debate-test-{uuid.uuid4().hex[:8]}"
    conf = tmp_path / "tmux.conf"
    conf.write_text("set -g remain-on-exit on\nset -g status off\n")
    tmux = ["tmux", "-L", sock, "-f", str(conf)]
    env = dict(os.environ, TERM="xterm-256color")
    env.pop("NO_COLOR", None)
    env.pop("TMUX", None)

    def capture():
        return subprocess.run([*tmux, "capture-pane", "-p", "-t", "top"], capture_output=True, text=True,
                              timeout=10, env=env).stdout

    def pane(fmt):
        return subprocess.run([*tmux, "display-message", "-p", "-t", "top", fmt], capture_output=True,
                              text=True, timeout=10, env=env).stdout.strip()
    try:
        # A shell in the pane reaps enqueue and writes its status to a file:
        # tmux 3.3 marks the pane dead at EOF but, on a busy machine, may
        # leave the process unreaped (and its status unknown) for a while.
        status = tmp_path / "top.status"
        subprocess.run([*tmux, "new-session", "-d", "-x", "120", "-y", "40", "-s", "top",
                        "sh", "-c", '"$@"; echo $? > "$0.tmp" && mv "$0.tmp" "$0"', str(status),
                        ENQUEUE_BIN, "-c", w.ini, "top", "--interval", "0.5"],
                       check=True, env=env, timeout=20)

        def screen():
            s = capture()
            return s if re.search(r"queue\s+3\b", s) and first in s and "packages" in s else None
        s = poll(screen, 20, "enqueue top to show the queue and the running build", 0.3)
        line = next(ln for ln in s.splitlines() if first in ln)
        assert "packages" in line and "2m00s" in line and "[" in line, line    # phase, timeout, bar
        wid = w.wait_log(r"worker (\S+) ").group(1)
        assert wid in s, s                                   # the worker is listed
        # Redrawn in place: one snapshot on the screen, not a scroll of them.
        time.sleep(1.5)
        s = capture()
        assert len(re.findall(r"queue\s+\d+", s)) == 1, s
        assert pane("#{pane_dead}") == "0"
        # q quits, with status 0.
        subprocess.run([*tmux, "send-keys", "-t", "top", "q"], check=True, env=env, timeout=10)
        poll(status.exists, 10, "enqueue top to quit on q")
        assert status.read_text().strip() == "0", status.read_text()
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True, env=env, timeout=10)
        # Stop the running build now (it goes back on the queue), and let the
        # worker finish releasing before the fleet's SIGTERM (a signal while
        # releasing means "exit at once").
        w.signal(signal.SIGINT)
        try:
            w.wait(20)
        except subprocess.TimeoutExpired:
            pass
