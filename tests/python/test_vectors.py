"""The shared payload vectors through the Python validator.

tests/unit/test_vectors.c runs the same file through the worker's
job_decode(): a payload gets the same verdict from both, or one of these
two tests fails.
"""
from debate_queue import CLIENT_REFUSALS, Limits, refusal
from debate_queue.validate import payload_id


from .vectors import load

from tests.harness import REPO, write_ini


def test_every_vector_gets_its_reason():
    lim, vecs = load()
    wrong = []
    for v in vecs:
        r = refusal(v.payload, lim)
        got = "ok" if r is None else r.reason
        if got != v.expect:
            wrong.append(f"payloads.txt:{v.line}: {v.what}: wanted {v.expect}, got {got}"
                         + (f" ({r.message})" if r else ""))
    assert not wrong, "\n".join(wrong)


def test_vectors_cover_every_reason_a_client_can_check():
    _, vecs = load()
    assert len(vecs) >= 60
    seen = {v.expect for v in vecs}
    assert seen == set(CLIENT_REFUSALS) | {"ok"}, set(CLIENT_REFUSALS) - seen


def test_refusals_name_the_field():
    lim, vecs = load()
    for v in vecs:
        r = refusal(v.payload, lim)
        if r is None:
            continue
        assert r.field in ("payload", "id", "profile", "output", "source_date_epoch", "enqueued_at",
                           "memory", "cpus", "timeout", "warning", "retries", "image", "meta",
                           "profile_archive", "upload", "upload.url", "upload.headers"), v
        assert r.message.startswith(r.field) or r.field == "payload", (v, r.message)


def test_limits_from_a_worker_ini(tmp_path):
    """Limits.from_ini() reads what the vectors' @ lines stand for, and the
    shipped worker.ini gives the defaults."""
    lim, _ = load()
    path = write_ini(tmp_path / "worker.ini", {
        "queue": {"max_payload": 4096},
        "worker": {"builds_root": lim.builds_root},
        "sandbox": {"image": lim.images[0], "images": " ".join(lim.images[1:]), "max_memory": "16g",
                    "max_cpus": 16, "max_timeout": 14400, "timeout": "1200   ; the default"},
    })
    assert Limits.from_ini(path) == lim
    shipped = Limits.from_ini(REPO / "worker.ini")
    assert shipped == Limits(builds_root="/var/lib/debate/builds", images=("localhost/debate-archiso:latest",))


def test_the_reapers_scanner_reads_the_id_of_every_accepted_vector(redis_server):
    """The msgpack scanner in worker/lua/prelude.lua, which the reaper and the
    release use instead of cmsgpack, reads the id of every payload the
    validators accept (an empty container 16 deep among them: only
    non-empty containers count), and of none refused for its shape."""
    prelude = (REPO / "worker" / "lua" / "prelude.lua").read_text()
    r = redis_server.client()
    _, vecs = load()
    wrong = []
    for v in vecs:
        got = r.eval(prelude + "return payload_id(ARGV[1]) or false\n", 0, v.payload)
        want = payload_id(v.payload) if v.expect == "ok" else None
        if v.expect == "ok" or v.expect in ("malformed", "too_deep", "not_a_map", "bad_id"):
            if (got.decode() if got else None) != want:
                wrong.append(f"payloads.txt:{v.line}: {v.what}: scanner read {got!r}, wanted {want!r}")
    assert not wrong, "\n".join(wrong)
