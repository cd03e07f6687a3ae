"""shared/python/examples/fastapi_app.py over real HTTP: uvicorn in a
subprocess on a free port, httpx as the client, a real worker behind."""
import json
import os
import signal
import socket
import subprocess
import time

import httpx
import pytest

from debate_queue import Client
from debate_queue._common import FOLLOW_CLIENT_NAME


from tests.harness import SHARED_PYTHON, SLOW, free_port, make_profile, write_script


@pytest.fixture
def api(redis_srv, ns, tmp_path):
    port = free_port()
    env = dict(os.environ, DEBATE_REDIS_URL=redis_srv.url, DEBATE_NAMESPACE=ns,
               PYTHONPATH=str(SHARED_PYTHON))
    log = open(tmp_path / "uvicorn.log", "wb")
    p = subprocess.Popen(["/usr/bin/python3", "-m", "uvicorn", "--app-dir", str(SHARED_PYTHON / "examples"),
                          "--host", "127.0.0.1", "--port", str(port), "fastapi_app:app"],
                         stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path,
                         start_new_session=True)
    try:
        deadline = time.time() + 20 * SLOW
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert p.poll() is None and time.time() < deadline, (tmp_path / "uvicorn.log").read_text()
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(p.pid, signal.SIGKILL)
                p.wait()
        log.close()


def read_sse(resp):
    """The SSE messages of a streamed response, as dicts, until the stream ends."""
    msg, out = {}, []
    for line in resp.iter_lines():
        line = line.rstrip("\r\n")        # httpx 0.23 keeps the line ends
        if line == "":
            if msg:
                out.append(msg)
            msg = {}
            continue
        key, _, value = line.partition(": ")
        msg[key] = value
    return out


def test_submit_and_stream_events_over_http(api, fleet, broot, tmp_path):
    make_profile(broot, "p")
    cmd = write_script(tmp_path, 'echo "[mkarchiso] INFO: Validating options..."\n'
                                 'for i in 1 2 3 4 5; do echo "step $i"; sleep 0.2; done\n')
    fleet.start(sandbox={"runtime": "exec", "command": cmd}, worker={"log_batch_interval": 0.1})
    with httpx.Client(base_url=api, timeout=30) as http:
        r = http.post("/builds", json={"profile": "p", "output": "out/1", "memory": "1g", "meta": {"u": 1}})
        assert r.status_code == 201, r.text
        jid = r.json()["id"]
        # The stream starts while the build runs and ends with it.
        with http.stream("GET", f"/builds/{jid}/events") as resp:
            assert resp.status_code == 200
            assert resp.headers["content-type"].startswith("text/event-stream")
            msgs = read_sse(resp)
        assert [int(m["id"]) for m in msgs] == list(range(1, len(msgs) + 1))
        assert msgs[0]["event"] == "started" and msgs[-1]["event"] == "finished"
        data = [json.loads(m["data"]) for m in msgs]
        assert all(d["id"] == jid and d["type"] == m["event"] for d, m in zip(data, msgs))
        assert data[-1]["result"]["status"] == "succeeded" and data[-1]["result"]["meta"] == {"u": 1}
        lines = [x for d in data if d["type"] == "log" for x in d["lines"]]
        assert [x for x in lines if x.startswith("step")] == [f"step {i}" for i in range(1, 6)]

        # A reconnecting EventSource goes on after its Last-Event-ID.
        with http.stream("GET", f"/builds/{jid}/events", headers={"Last-Event-ID": "2"}) as resp:
            again = read_sse(resp)
        assert [m["id"] for m in again] == [m["id"] for m in msgs][2:]

        assert http.get(f"/builds/{jid}").json()["state"] == "succeeded"
        r = http.post("/builds", json={"profile": "p", "output": "o", "memory": "12q"})
        assert r.status_code == 422 and r.json()["detail"]["field"] == "memory"
        assert r.json()["detail"]["reason"] == "bad_value"
        r = http.post("/builds", json={"profile": "p", "output": "o", "id": jid})
        assert r.status_code == 409 and r.json()["detail"]["state"] == "succeeded"
        assert http.get("/builds/no-such-job").status_code == 404
        assert http.get("/builds/bad%20id/events").status_code == 400


def test_a_client_that_goes_away_ends_its_stream(api, fleet, r, ns, broot, tmp_path):
    """An HTTP client that disconnects mid-build: the app's follower is
    cancelled and its Redis connection closed; the build goes on."""
    make_profile(broot, "p")
    cmd = write_script(tmp_path, 'i=0; while :; do echo "tick $i"; i=$((i+1)); sleep 0.1; done\n')
    fleet.start(sandbox={"runtime": "exec", "command": cmd}, worker={"log_batch_interval": 0.1})
    with httpx.Client(base_url=api, timeout=30) as http:
        jid = http.post("/builds", json={"profile": "p", "output": "o"}).json()["id"]
        def followers():
            return [c for c in r.client_list() if c.get("name") == FOLLOW_CLIENT_NAME]

        def clients():
            """CLIENT LIST short enough that pytest does not elide it."""
            return [(c.get("id"), c.get("name"), c.get("cmd")) for c in r.client_list()]

        for _ in range(3):
            with http.stream("GET", f"/builds/{jid}/events") as resp:
                # Keep the line iterator referenced: breaking out of a bare
                # `for line in resp.iter_lines()` drops the last reference
                # to httpx's generators, and httpcore closes the connection
                # of a response not read to its end as they are finalized,
                # so the HTTP client would go away here, before the check
                # below, not when the block ends.
                lines = resp.iter_lines()
                n = 0
                for line in lines:
                    n += line.startswith("id: ")
                    if n == 3:
                        break
                assert len(followers()) == 1, clients()   # the stream's follower, on its own connection
            # Leaving the block closed the response mid-stream: the client went away.
            del lines
            deadline = time.time() + 10 * SLOW
            while followers() and time.time() < deadline:
                time.sleep(0.05)
            assert followers() == [], clients()
        assert http.get(f"/builds/{jid}").json()["state"] == "running"
        c = Client(namespace=ns, redis=r)
        assert c.cancel(jid)
        assert c.result(jid, timeout=20).status.value == "cancelled"
        assert http.get(f"/builds/{jid}").json()["state"] == "cancelled"
