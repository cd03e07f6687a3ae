"""Following builds with Client and AsyncClient through a Redis restart,
and what a cancelled asyncio follower leaves behind (nothing)."""
import asyncio
import random
import threading
import time

import msgpack
import pytest

from debate_queue import AsyncClient, Client, JobRejected, ResultTimeout, Status
from debate_queue.pack import pack_profile_dir

from .test_client import archive_members, local_profile

from tests.harness import SLOW, Fleet, RedisServer, make_profile, nskey, poll, write_script


def seqs(evs):
    return [e.seq for e in evs]


def test_follow_a_build_while_redis_restarts(tmp_path, ns, broot):
    """redis-server (AOF) stopped for 1.5 s and started again mid-build:
    the worker reconnects and delivers what it buffered; a sync and an
    async follower and a result() waiter all reconnect with backoff, and
    each follower sees every seq exactly once, in order, up to finished."""
    srv = RedisServer(tmp_path / "predis", persist=True).start()
    fleet = Fleet(tmp_path, srv.url, ns, broot)
    client = Client(srv.url, namespace=ns)
    try:
        make_profile(broot, "p")
        cmd = write_script(tmp_path, 'echo "[mkarchiso] INFO: Validating options..."\n'
                                     'i=0; while [ $i -lt 30 ]; do echo "line $i"; i=$((i+1)); sleep 0.2; done\n'
                                     'echo iso > "$DEBATE_OUTPUT/out.iso"\n')
        w = fleet.start(sandbox={"runtime": "exec", "command": cmd},
                        worker={"log_batch_interval": 0.1, "log_batch_lines": 2})
        job = client.submit("p", "out/1")
        sync_evs, async_evs, results, errors = [], [], [], []

        def follow_sync():
            try:
                sync_evs.extend(ev for ev in client.events(job.id, timeout=90))
            except Exception as e:      # reported below
                errors.append(e)

        def follow_async():
            async def run():
                c = AsyncClient(srv.url, namespace=ns)
                try:
                    async for ev in c.events(job.id, timeout=90):
                        async_evs.append(ev)
                finally:
                    await c.close()
            try:
                asyncio.run(run())
            except Exception as e:
                errors.append(e)

        def wait_result():
            try:
                results.append(client.result(job.id, timeout=90))
            except Exception as e:
                errors.append(e)

        threads = [threading.Thread(target=f) for f in (follow_sync, follow_async, wait_result)]
        for t in threads:
            t.start()
        poll(lambda: len(sync_evs) >= 3 and len(async_evs) >= 3, 20, "the first events")
        srv.stop()
        t_down = time.time()
        time.sleep(1.5)
        srv.start()
        for t in threads:
            t.join(90 * SLOW)
        assert not errors, errors
        assert w.wait_log(r"redis cmd: connected again", 10)
        stored = list(Client(srv.url, namespace=ns).events(job.id, timeout=10))
        n = len(stored)
        assert seqs(stored) == list(range(1, n + 1)) and stored[-1].type == "finished"
        assert seqs(sync_evs) == seqs(stored) and seqs(async_evs) == seqs(stored)
        assert [e.stream_id for e in sync_evs] == [e.stream_id for e in stored]
        # The outage really was mid-build: events were written after it.
        assert any(e.ts > t_down for e in stored) and any(e.ts < t_down for e in stored)
        lines = [line for e in sync_evs if e.type == "log" for line in e.lines]
        assert [x for x in lines if x.startswith("line ")] == [f"line {i}" for i in range(30)]
        assert results[0] == stored[-1].result and results[0].status is Status.SUCCEEDED
    finally:
        client.close()
        fleet.close()
        srv.stop()


def test_a_cancelled_async_follower_leaves_the_client_usable(fleet, r, redis_srv, ns, broot, tmp_path):
    make_profile(broot, "p")
    cmd = write_script(tmp_path, 'echo "[mkarchiso] INFO: Validating options..."\n'
                                 'i=0; while :; do echo "tick $i"; i=$((i+1)); sleep 0.1; done\n')
    fleet.start(sandbox={"runtime": "exec", "command": cmd},
                worker={"log_batch_interval": 0.1, "stats_interval": 1})

    async def main():
        c = AsyncClient(redis_srv.url, namespace=ns)
        try:
            job = await c.submit("p", "o", meta={"via": "aio"})
            with pytest.raises(ResultTimeout):
                await c.result(job.id, timeout=0.01)
            await c.status(job.id)                      # fills the pool
            poll_start = time.monotonic()
            while (await c.status(job.id)).state is not Status.RUNNING:
                assert time.monotonic() - poll_start < 20 * SLOW
                await asyncio.sleep(0.05)
            before = len(r.client_list())

            got = []

            async def follow():
                async for ev in c.events(job.id):
                    got.append(ev)

            # Cancelled at random moments (mid-send, mid-read, between
            # reads), a follower stops every time and closes its connection.
            rnd = random.Random(7)
            for _ in range(30):
                got.clear()
                task = asyncio.create_task(follow())
                while len(got) < 3:
                    await asyncio.sleep(0)
                assert len(r.client_list()) == before + 1   # its own connection
                for _ in range(rnd.randrange(40)):
                    await asyncio.sleep(0)                  # a few loop turns: a send, a read
                if rnd.random() < 0.3:
                    await asyncio.sleep(rnd.uniform(0, 0.2))
                task.cancel()
                done, _ = await asyncio.wait({task}, timeout=5 * SLOW)
                assert task in done and task.cancelled(), "a cancelled follower went on"
                for _ in range(40):
                    if len(r.client_list()) == before:
                        break
                    await asyncio.sleep(0.05)
                assert len(r.client_list()) == before       # ... closed with the task

            # A follower left early (break) closes its connection too, when
            # the event loop finalizes the generator.
            async for ev in c.events(job.id):
                if ev.seq >= 3:
                    break
            for _ in range(40):
                if len(r.client_list()) == before:
                    break
                await asyncio.sleep(0.05)
            assert len(r.client_list()) == before

            # The client goes on answering right.
            st = await c.status(job.id)
            assert st.state is Status.RUNNING and st.id == job.id
            assert [s.id for s in await c.running()] == [job.id]
            assert (await c.queue()).active_total == 1
            assert [w.id for w in await c.workers()] == [st.worker]
            assert await c.queued() == [] and await c.dead() == []

            # A command cancelled on the shared pool leaves no reply behind
            # for the next command on that connection.
            await c.redis.set(nskey(ns, "probe"), "v")
            blocked = asyncio.create_task(c.redis.blpop(nskey(ns, "nothing"), 1))
            await asyncio.sleep(0.2)
            blocked.cancel()
            with pytest.raises(asyncio.CancelledError):
                await blocked
            for _ in range(5):
                assert await c.redis.get(nskey(ns, "probe")) == b"v"
            await asyncio.sleep(1.2)                        # when the BLPOP would have answered
            assert await c.redis.get(nskey(ns, "probe")) == b"v"

            # A new follower replays from the start and follows to the end.
            assert await c.cancel(job.id) is True
            evs = []
            async for ev in job.events(timeout=30):
                evs.append(ev)
            assert seqs(evs) == list(range(1, len(evs) + 1)) and evs[-1].type == "finished"
            assert seqs(got) == seqs(evs)[:len(got)]
            res = await job.result(timeout=10)
            assert res.status is Status.CANCELLED and res.meta == {"via": "aio"}
            assert evs[-1].result == res and (await c.recent_results())[0] == res
        finally:
            await c.close()

    asyncio.run(main())


def test_async_submit_a_profile_dir_with_upload(tmp_path, redis_srv, ns):
    """AsyncClient.submit(profile_dir=, upload=) queues the payload Client.submit
    builds (the archive packed in a thread), and refuses what Client refuses."""
    d = local_profile(tmp_path)
    url = "https://files.example/up/{name}"

    async def run():
        c = AsyncClient(redis_srv.url, namespace=ns)
        try:
            job = await c.submit(profile_dir=d, upload=url, upload_headers={"Authorization": "x"}, id="a1")
            with pytest.raises(JobRejected) as e:
                await c.submit(profile_dir=d, upload=url, upload_headers={"Host": "h"})
            assert (e.value.field, e.value.reason) == ("upload.headers", "bad_value")
            with pytest.raises(JobRejected) as e:
                await c.submit("p", profile_dir=d, upload=url)
            assert (e.value.field, e.value.reason) == ("profile", "bad_value")
            return job
        finally:
            await c.close()

    job = asyncio.run(run())
    sync = Client(redis_srv.url, namespace=ns)
    try:
        queued = sync.redis.lrange(nskey(ns, "queue"), 0, -1)
    finally:
        sync.close()
    assert queued == [job.payload]
    assert list(msgpack.unpackb(job.payload))[:3] == ["id", "profile_archive", "upload"]
    wire = msgpack.unpackb(job.payload)
    assert wire["upload"] == {"url": url, "headers": {"Authorization": "x"}}
    assert wire["profile_archive"] == pack_profile_dir(d)
    assert "sub/hello.txt" in [m[0] for m in archive_members(wire["profile_archive"])]
