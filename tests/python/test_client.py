"""debate_queue.Client against a real redis-server and a real worker (exec
runtime, one test with podman): submit, wait, follow, cancel, the readers
a dashboard uses, and the dead letters."""
import base64
import hashlib
import http.server
import io
import os
import shutil
import tarfile
import subprocess
import threading
import time
from pathlib import Path

import msgpack
import pytest

from debate_queue import (Client, DeadLetterError, JobBusy, JobDead, JobExists, JobNotFound,
                          JobRejected, Limits, ResultTimeout, Status)
from debate_queue.pack import pack_profile_dir

from tests.harness import SHARED_PYTHON, SLOW, TEST_IMAGE, make_profile, nskey, poll, write_script


@pytest.fixture
def client(redis_srv, ns):
    c = Client(redis_srv.url, namespace=ns)
    yield c
    c.close()


def test_submit_wait_and_read_the_result(fleet, client, r, ns, broot, tmp_path):
    make_profile(broot, "p")
    cmd = write_script(tmp_path, 'echo "[mkarchiso] INFO: Validating options..."\necho hello\n'
                                 'echo iso > "$DEBATE_OUTPUT/a.iso"\n')
    fleet.start(sandbox={"runtime": "exec", "command": cmd})
    job = client.submit("p", "out/1", memory="512m", cpus=1, meta={"user": 7, "tags": ["a"]})
    # Several waiters at once all get the one result (it is read, not popped).
    got = []
    threads = [threading.Thread(target=lambda: got.append(job.result(timeout=30))) for _ in range(3)]
    for t in threads:
        t.start()
    res = job.result(timeout=30)
    for t in threads:
        t.join(40)
    assert len(got) == 3 and all(g == res for g in got)
    assert res.status is Status.SUCCEEDED and res.ok and res.exit_code == 0 and res.id == job.id
    assert res.meta == {"user": 7, "tags": ["a"]} and res.attempt == 1
    assert [(a.name, a.size) for a in res.artifacts] == [("a.iso", 4)]
    assert res.artifacts[0].sha256 == hashlib.sha256(b"iso\n").hexdigest()
    assert "hello" in res.log_tail
    assert r.llen(nskey(ns, "result", job.id)) == 1          # still there for others

    st = job.status()
    assert st.state is Status.SUCCEEDED and st.final and st.attempt == 1 and st.result == res
    # The record is bound to the exact payload bytes that were queued.
    assert st.digest == hashlib.sha1(job.payload).hexdigest() == job.digest
    evs = list(job.events(timeout=30))
    assert [e.seq for e in evs] == list(range(1, len(evs) + 1))
    assert evs[0].type == "started" and evs[0].runtime == "exec" and evs[-1].type == "finished"
    assert evs[-1].result == res
    assert any(e.type == "phase" and e.name for e in evs)
    assert "hello" in [line for e in evs if e.type == "log" for line in e.lines]
    assert [e.seq for e in job.events(since_seq=2, timeout=30)] == [e.seq for e in evs][2:]
    assert client.recent_results()[0] == res


def test_the_payload_is_what_enqueue_builds(enqueue, ini, redis_server):
    """The same job from `enqueue submit` and from submit(): the same
    fields, in the same order, with the same msgpack types."""
    enqueue("submit", "--profile", "p", "--output", "o/1", "--id", "from-c1", "--memory", "512m",
            "--cpus", "2", "--timeout", "600", "--warning", "300", "--epoch", "1700000000",
            "--retries", "2", "--meta", "user=7", check=True)
    c = Client(redis_server.url, namespace=ini.ns)
    try:
        c.submit("p", "o/1", id="from-py", memory="512m", cpus=2, timeout=600, warning=300,
                 source_date_epoch=1700000000, retries=2, meta={"user": "7"})
        from_py, from_c = redis_server.client().lrange(nskey(ini.ns, "queue"), 0, 1)
    finally:
        c.close()

    def shape(raw):
        pairs = msgpack.unpackb(raw, object_pairs_hook=list)
        return [(k, type(v).__name__, v if k not in ("id", "enqueued_at") else None) for k, v in pairs]

    assert shape(from_py) == shape(from_c)
    # Only id and enqueued_at differ, so only those bytes may.
    assert len(from_py) == len(from_c)


def test_bad_fields_are_refused_before_anything_is_sent(client, r, ns):
    cases = [
        (dict(id="bad id"), "id", "bad_id"),
        (dict(memory="12q"), "memory", "bad_value"),
        (dict(memory="5m"), "memory", "bad_value"),
        (dict(memory="17g"), "memory", "over_limit"),
        (dict(cpus="four"), "cpus", "wrong_type"),
        (dict(cpus=True), "cpus", "wrong_type"),
        (dict(cpus=0), "cpus", "bad_value"),
        (dict(timeout=60, warning=61), "warning", "bad_value"),
        (dict(warning=1300), "warning", "bad_value"),    # after the default timeout
        (dict(timeout=10 ** 6), "timeout", "over_limit"),
        (dict(retries=11), "retries", "over_limit"),
        (dict(retries=-1), "retries", "bad_value"),
        (dict(meta=[1]), "meta", "wrong_type"),
        (dict(meta={"big": "x" * (1 << 20)}), "payload", "payload_too_large"),
        (dict(source_date_epoch=-1), "source_date_epoch", "bad_value"),
        (dict(image=5), "image", "wrong_type"),
    ]
    for kw, field, reason in cases:
        with pytest.raises(JobRejected) as e:
            client.submit("p", "o", **kw)
        assert (e.value.field, e.value.reason) == (field, reason), kw
    for profile, output in (("../etc", "o"), ("p", "a/../../b"), ("", "o"), ("p", "a:b"),
                            ("/srv/x", "o"), ("p", "o\0x")):
        with pytest.raises(JobRejected) as e:
            client.submit(profile, output)
        assert e.value.reason == "bad_path"
    with pytest.raises(JobRejected) as e:
        Client(namespace=ns, limits=Limits(images=("a:1",)), redis=client.redis).submit("p", "o",
                                                                                       image="b:2")
    assert e.value.reason == "image_not_allowed"
    # An absolute path inside a known builds_root is sent relative, as enqueue does.
    c2 = Client(namespace=ns, limits=Limits(builds_root="/srv/builds"), redis=client.redis)
    job = c2.submit("/srv/builds/p", "/srv/builds//o/1", id="abs")
    assert msgpack.unpackb(job.payload)["profile"] == "p" and msgpack.unpackb(job.payload)["output"] == "o/1"
    r.delete(nskey(ns, "queue"), nskey(ns, "job", "abs"))
    assert r.keys(nskey(ns, "*")) == []


def test_an_existing_id_is_refused_and_rerun_continues_the_stream(fleet, client, r, ns, broot, tmp_path):
    make_profile(broot, "p")
    cmd = write_script(tmp_path, "echo run\n")
    job = client.submit("p", "o", id="same")
    with pytest.raises(JobExists) as e:
        client.submit("p", "o", id="same")
    assert e.value.state == "queued" and not isinstance(e.value, JobBusy)
    with pytest.raises(JobBusy) as e:
        client.submit("p", "o", id="same", rerun=True)
    assert e.value.state == "queued"
    assert r.llen(nskey(ns, "queue")) == 1            # nothing more was queued

    fleet.start(sandbox={"runtime": "exec", "command": cmd})
    first = job.result(timeout=20)
    assert first.status is Status.SUCCEEDED and first.attempt == 1
    with pytest.raises(JobExists) as e:
        client.submit("p", "o", id="same")
    assert e.value.state == "succeeded"
    # Only the result left (the hash gone): still taken.
    r.delete(nskey(ns, "job", "same"))
    with pytest.raises(JobExists) as e:
        client.submit("p", "o", id="same")
    assert e.value.state == "finished"

    n_first = len(list(client.events("same", timeout=30)))
    again = client.submit("p", "o", id="same", rerun=True, meta={"run": 2})
    second = again.result(timeout=20)
    assert second.meta == {"run": 2} and second.status is Status.SUCCEEDED
    assert r.llen(nskey(ns, "result", "same")) == 1      # the old result went
    evs = list(client.events("same", timeout=30))
    assert [e.seq for e in evs] == list(range(1, len(evs) + 1)) and len(evs) == 2 * n_first
    assert [e.type for e in evs].count("finished") == 2 and evs[-1].result == second
    assert client.status("same").digest == again.digest != job.digest


def test_result_times_out_cleanly(client, r, ns):
    job = client.submit("p", "o")                # no worker: it stays queued
    t0 = time.monotonic()
    with pytest.raises(ResultTimeout) as e:
        job.result(timeout=1.5)
    took = time.monotonic() - t0
    assert 1.5 <= took < 3.5 and e.value.id == job.id and isinstance(e.value, TimeoutError)
    assert job.status().state is Status.QUEUED                   # the client goes on working
    assert r.llen(nskey(ns, "queue")) == 1
    with pytest.raises(ResultTimeout):             # a producer may write no job hash: it waits
        client.result("never-submitted", timeout=0.5)
    with pytest.raises(JobNotFound):
        client.status("never-submitted")


def test_cancel_and_the_dashboard_readers(fleet, client, r, ns, broot, tmp_path):
    make_profile(broot, "p")
    cmd = write_script(tmp_path, 'echo "[mkarchiso] INFO: Validating options..."\nsleep 30\n')
    w = fleet.start(sandbox={"runtime": "exec", "command": cmd}, worker={"stats_interval": 1})
    long = client.submit("p", "o/long")
    waiting = [client.submit("p", f"o/{i}", id=f"wait-{i}") for i in range(3)]
    poll(lambda: client.status(long.id).state is Status.RUNNING, 20, "the build to run")
    wid = w.wait_log(r"worker (\S+) ").group(1)

    running = client.running()
    assert [s.id for s in running] == [long.id] and running[0].worker == wid
    q = client.queued()
    assert [j.id for j in q] == ["wait-0", "wait-1", "wait-2"]        # next one first
    assert [j.position for j in q] == [0, 1, 2] and all(j.enqueued_at for j in q)
    assert [j.id for j in client.queued(start=1, count=1)] == ["wait-1"]
    info = client.queue()
    assert info.queued == 3 and info.active == {wid: 1} and info.active_total == 1
    ws = poll(lambda: [x for x in client.workers() if x.jobs == [long.id]], 10, "a heartbeat naming the job")
    assert [x.id for x in client.workers()] == [wid] and ws[0].concurrency == 1 and ws[0].running == 1
    assert not ws[0].lost and ws[0].free == 0

    assert client.cancel(long.id) is True
    res = long.result(timeout=20)
    assert res.status is Status.CANCELLED
    assert client.cancel(long.id) is False                 # already ended
    for j in waiting:
        assert client.cancel(j.id) is True
    for j in waiting:
        assert j.result(timeout=20).status is Status.CANCELLED
    assert client.queue().queued == 0 and client.running() == []


def test_dead_jobs_and_retry_dead_ownership(fleet, client, r, ns, broot, tmp_path):
    """A refused payload: result() says it is dead, events() ends with the
    dead event.  retry_dead() puts a payload back only when it owns its
    job record (digest) or there is no record."""
    make_profile(broot, "p")
    fleet.start(sandbox={"runtime": "exec", "command": write_script(tmp_path, "echo ok\n")})
    # A producer that skipped the checks: the worker refuses it.
    bad = msgpack.packb({"id": "d1", "profile": "p", "output": "o", "cpus": "four"})
    r.lpush(nskey(ns, "queue"), bad)
    with pytest.raises(JobDead) as e:
        client.result("d1", timeout=20)
    assert "cpus" in e.value.error
    evs = list(client.events("d1", timeout=20))
    assert evs[-1].type == "dead" and evs[-1].reason == "wrong_type"
    dl = client.dead()
    assert [(d.index, d.id, d.reason, d.payload) for d in dl] == [(0, "d1", "wrong_type", bad)]
    fleet.close()        # no worker from here: the retried payloads stay queued
    fleet.workers = []

    # A duplicate of a live job's id, dead-lettered: not its record, so left alone.
    real = client.submit("p", "o", id="dup")
    dup = msgpack.packb({"id": "dup", "profile": "p", "output": "other"})
    entry = msgpack.packb({"reason": "duplicate_id", "error": "id: dup is taken", "payload": dup,
                           "id": "dup", "worker": "w", "ts": time.time()}, use_bin_type=True)
    r.lpush(nskey(ns, "dead"), entry)
    with pytest.raises(DeadLetterError) as e:
        client.retry_dead(0)
    assert e.value.why == "not_owner"
    # The payload that owns a dead record goes back, and the record is reset.
    r.hset(nskey(ns, "job", "dup"), mapping={"state": "dead", "error": "lost"})
    r.lrem(nskey(ns, "queue"), 1, real.payload)
    own = msgpack.packb({"reason": "worker_lost", "error": "lost", "payload": real.payload,
                         "id": "dup", "worker": "w", "ts": time.time()}, use_bin_type=True)
    r.lpush(nskey(ns, "dead"), own)
    again = client.retry_dead(0)
    assert again.id == "dup" and again.digest == real.digest
    h = client.status("dup")
    assert h.state is Status.QUEUED and h.digest == real.digest and h.last_error == "lost" and not h.error
    assert r.lrange(nskey(ns, "queue"), 0, -1) == [real.payload]
    with pytest.raises(DeadLetterError) as e:
        client.retry_dead(5)
    assert e.value.why == "gone"
    # The record gone: the refused payload goes back (fixed by hand, say).
    r.delete(nskey(ns, "job", "d1"))
    idx = [d.index for d in client.dead() if d.id == "d1"][0]
    assert client.retry_dead(idx).id == "d1"
    assert client.status("d1").state is Status.QUEUED
    assert [d.id for d in client.dead()] == ["dup"]


@pytest.mark.containers
def test_a_build_in_podman(podman, fleet, client, broot):
    make_profile(broot, "prof", iso_name="pyclient", mode="ok")
    fleet.start(podman)
    job = client.submit("prof", "out/podman", image=TEST_IMAGE, memory="256m", cpus=1, timeout=120)
    res = job.result(timeout=120 * SLOW)
    assert res.status is Status.SUCCEEDED, res
    assert res.image == TEST_IMAGE and any(a.name.endswith(".iso") for a in res.artifacts)
    evs = list(job.events(timeout=30))
    assert evs[0].runtime == "podman" and evs[-1].result == res


def test_pip_install_copies_the_submit_script(tmp_path):
    """`pip install shared/python` gives a package that finds submit.lua
    (the symlink in the source tree becomes a copy) and runs."""
    # A copy of shared/python and shared/lua (the symlink kept), since pip
    # builds in the tree it is given.
    src = tmp_path / "shared"
    ignore = shutil.ignore_patterns("__pycache__", "build", "*.egg-info")
    shutil.copytree(SHARED_PYTHON, src / "python", symlinks=True, ignore=ignore)
    shutil.copytree(SHARED_PYTHON.parent / "lua", src / "lua")
    assert (src / "python" / "debate_queue" / "submit.lua").is_symlink()
    target = tmp_path / "site"
    p = subprocess.run(["/usr/bin/python3", "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                        "--no-index", "--target", str(target), str(src / "python")],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    lua = target / "debate_queue" / "submit.lua"
    assert lua.is_file() and not lua.is_symlink()
    assert lua.read_text() == (SHARED_PYTHON.parent / "lua" / "submit.lua").read_text()
    out = subprocess.run(["/usr/bin/python3", "-I", "-c",
                          "import sys; sys.path.insert(0, sys.argv[1]); import debate_queue._common as c, "
                          "debate_queue; print(debate_queue.__file__); print(c.SUBMIT.sha)", str(target)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0].startswith(str(target))


# ------------------------------------------------------------ remote builds

def local_profile(root):
    """A profile dir on the client's side: files, a subdirectory, a symlink,
    a hard link, an executable and a setuid file (the bit is not packed)."""
    d = Path(root) / make_profile(root, "prof")
    (d / "sub").mkdir()
    (d / "sub" / "hello.txt").write_text("hello from the client\n")
    os.symlink("sub/hello.txt", d / "link")
    os.link(d / "sub" / "hello.txt", d / "hard.txt")
    run = d / "run.sh"
    run.write_text("#!/bin/sh\n")
    run.chmod(0o4755)
    return d


def archive_members(data):
    """(name, type, mode, uid, gid, linkname, bytes) of each member of a tar(.gz), by name."""
    out = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tf:
        for m in tf.getmembers():
            f = tf.extractfile(m) if m.isreg() else None
            out.append((m.name, m.type, m.mode, m.uid, m.gid, m.linkname, f.read() if f else None))
    return sorted(out)


class PutServer:
    """An HTTP server on 127.0.0.1 in a thread that keeps each PUT (path, headers, body)."""

    def __init__(self):
        self.puts = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_PUT(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.puts.append((self.path, dict(self.headers), body))
                self.send_response(201)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(10)


@pytest.fixture
def put_server():
    s = PutServer()
    yield s
    s.close()


def test_submit_a_profile_dir_and_upload_the_artifacts(fleet, client, tmp_path, put_server):
    """submit(profile_dir=..., upload=...) with no output: the worker builds the
    unpacked profile (symlink kept, setuid gone) and PUTs each artifact here."""
    d = local_profile(tmp_path / "client")
    cmd = write_script(tmp_path, 'set -e\np="$DEBATE_PROFILE"\n'
                                 'cat "$p/sub/hello.txt" > "$DEBATE_OUTPUT/a.iso"\n'
                                 'test "$(readlink "$p/link")" = sub/hello.txt\n'
                                 'test -x "$p/run.sh" && test ! -u "$p/run.sh"\n'
                                 'mkdir "$DEBATE_OUTPUT/sums" && cat "$p/hard.txt" > "$DEBATE_OUTPUT/sums/b.txt"\n')
    fleet.start(sandbox={"runtime": "exec", "command": cmd})
    secret = "Bearer s3cret-" + os.urandom(4).hex()
    job = client.submit(profile_dir=d, upload=put_server.url + "/up/{name}",
                        upload_headers={"Authorization": secret}, meta={"from": "py"})
    wire = msgpack.unpackb(job.payload)
    assert "profile" not in wire and "output" not in wire
    assert wire["upload"] == {"url": put_server.url + "/up/{name}", "headers": {"Authorization": secret}}
    res = job.result(timeout=30)
    assert res.ok, (res, fleet.workers[0].log()[-3000:])
    body = b"hello from the client\n"
    assert [(a.name, a.size, a.uploaded) for a in res.artifacts] == [("a.iso", len(body), True),
                                                                   ("sums/b.txt", len(body), True)]
    assert res.artifacts[0].url == put_server.url + "/up/a.iso"
    puts = sorted(put_server.puts)
    assert [(p, b) for p, _, b in puts] == [("/up/a.iso", body), ("/up/sums/b.txt", body)]
    for _, headers, _ in puts:
        assert headers["Authorization"] == secret
        assert headers["Content-Digest"] == "sha-256=:" + base64.b64encode(hashlib.sha256(body).digest()).decode() + ":"
    # The credential stays out of what the worker records.
    evs = list(job.events(timeout=30))
    assert any(e.type == "upload" for e in evs)
    assert secret not in repr(res.raw) and all(secret not in repr(e) for e in evs)


def test_the_remote_payload_is_what_enqueue_builds(enqueue, ini, redis_server, tmp_path):
    """`enqueue submit --profile-dir --upload --upload-header` and submit(profile_dir=,
    upload=, upload_headers=): the same fields in the same order and types, and
    archives with the same entries (libarchive's and tarfile's bytes differ)."""
    d = local_profile(tmp_path / "client")
    url = "https://files.example/up/{name}"
    enqueue("submit", "--profile-dir", str(d), "--upload", url, "--upload-header", "Authorization: Bearer x",
            "--upload-header", "X-Tag: a b", "--id", "from-c1", "--epoch", "1700000000", check=True)
    c = Client(redis_server.url, namespace=ini.ns)
    try:
        c.submit(profile_dir=d, upload=url, upload_headers={"Authorization": "Bearer x", "X-Tag": "a b"},
                 id="from-py", source_date_epoch=1700000000)
        from_py, from_c = redis_server.client().lrange(nskey(ini.ns, "queue"), 0, 1)
    finally:
        c.close()

    def shape(raw):
        pairs = msgpack.unpackb(raw, object_pairs_hook=list)
        return [(k, type(v).__name__, archive_members(v) if k == "profile_archive" else
                 v if k not in ("id", "enqueued_at") else None) for k, v in pairs]

    assert shape(from_py) == shape(from_c)
    names = [m[0] for m in archive_members(msgpack.unpackb(from_py)["profile_archive"])]
    assert names == ["hard.txt", "link", "packages.x86_64", "profiledef.sh", "run.sh", "sub", "sub/hello.txt"]
    # Packing is deterministic: the same tree gives the same bytes.
    assert pack_profile_dir(d) == pack_profile_dir(d)


def test_remote_fields_are_refused_before_anything_is_sent(client, r, ns, tmp_path):
    d = local_profile(tmp_path / "client")
    url = "https://files.example/up/"
    cases = [
        (dict(), "profile", "missing_field"),
        (dict(upload=url), "profile", "missing_field"),
        (dict(profile="p", profile_dir=d, upload=url), "profile", "bad_value"),
        (dict(profile_dir=d, profile_archive=b"x", upload=url), "profile_dir", "bad_value"),
        (dict(profile="p", profile_archive=b"x", output="o"), "profile", "bad_value"),
        (dict(profile_dir=d), "output", "missing_field"),
        (dict(profile_archive=b"x"), "output", "missing_field"),
        (dict(profile_dir=tmp_path / "none", upload=url), "profile_dir", "bad_path"),
        (dict(profile_dir=d / "profiledef.sh", upload=url), "profile_dir", "bad_path"),
        (dict(profile_dir=5, upload=url), "profile_dir", "wrong_type"),
        (dict(profile_archive=b"", upload=url), "profile_archive", "bad_archive"),
        (dict(profile_archive="tar", upload=url), "profile_archive", "wrong_type"),
        (dict(profile_archive=b"\0" * (2 << 20), upload=url), "payload", "payload_too_large"),
        (dict(profile="p", upload=5), "upload.url", "wrong_type"),
        (dict(profile="p", upload="ftp://h/x/"), "upload.url", "bad_value"),
        (dict(profile="p", upload="https://{name}.evil/x"), "upload.url", "bad_value"),
        (dict(profile="p", upload="https://h"), "upload.url", "bad_value"),
        (dict(profile="p", upload="https://h/" + "a" * 2048), "upload.url", "bad_value"),
        (dict(profile="p", upload=url, upload_headers={"Host": "evil"}), "upload.headers", "bad_value"),
        (dict(profile="p", upload=url, upload_headers={"content-length": "1"}), "upload.headers", "bad_value"),
        (dict(profile="p", upload=url, upload_headers={"X Y": "v"}), "upload.headers", "bad_value"),
        (dict(profile="p", upload=url, upload_headers={"A": "s3cret\r\nX: y"}), "upload.headers", "bad_value"),
        (dict(profile="p", upload=url, upload_headers={"A": "x" * 4097}), "upload.headers", "bad_value"),
        (dict(profile="p", upload=url, upload_headers={"A": 1}), "upload.headers", "wrong_type"),
        (dict(profile="p", upload=url, upload_headers={f"x-{i}": "v" for i in range(33)}),
         "upload.headers", "over_limit"),
        (dict(profile="p", upload=url, upload_headers=["A: b"]), "upload.headers", "wrong_type"),
        (dict(profile="p", output="o", upload_headers={"A": "b"}), "upload.headers", "bad_value"),
    ]
    for kw, field, reason in cases:
        with pytest.raises(JobRejected) as e:
            client.submit(**kw)
        assert (e.value.field, e.value.reason) == (field, reason), (kw, e.value)
        assert "s3cret" not in str(e.value)
    # What the worker would refuse to unpack is refused while packing, naming it.
    os.mkfifo(d / "sub" / "fifo")
    with pytest.raises(JobRejected) as e:
        client.submit(profile_dir=d, upload=url)
    assert (e.value.field, e.value.reason) == ("profile_dir", "bad_archive")
    assert str(d / "sub" / "fifo") in e.value.message and "not a file, directory or symlink" in e.value.message
    assert r.keys(nskey(ns, "*")) == []


def test_the_packed_archive(tmp_path):
    """Entries as enqueue/pack.c writes them: names relative, owners 0, a
    symlink as a symlink, a hard link as a second regular file, no setuid."""
    d = local_profile(tmp_path)
    got = {m[0]: m for m in archive_members(pack_profile_dir(d))}
    assert got["link"][1:] == (tarfile.SYMTYPE, 0o777, 0, 0, "sub/hello.txt", None)
    assert got["hard.txt"][1:] == (tarfile.REGTYPE, 0o666 & ~_umask(), 0, 0, "", b"hello from the client\n")
    assert got["run.sh"][1] == tarfile.REGTYPE and got["run.sh"][2] == 0o755
    assert got["sub"][1] == tarfile.DIRTYPE
    (tmp_path / "empty").mkdir()
    assert archive_members(pack_profile_dir(tmp_path / "empty")) == []


def _umask():
    m = os.umask(0)
    os.umask(m)
    return m
