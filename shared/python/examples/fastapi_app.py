"""A FastAPI backend over debate_queue: submit builds, stream their events.

    DEBATE_REDIS_URL=redis://localhost:6379/0 DEBATE_NAMESPACE=debate \\
    DEBATE_WORKER_INI=/etc/debate/worker.ini \\
    PYTHONPATH=shared/python uvicorn --app-dir shared/python/examples fastapi_app:app

    curl -X POST localhost:8000/builds -H 'content-type: application/json' \\
         -d '{"profile": "profiles/releng", "output": "out/42", "memory": "4g"}'
    curl -N localhost:8000/builds/ID/events        # Server-Sent Events

POST /builds answers 201 with the job's id, 422 naming the field the
worker would refuse (checked here, before anything reaches Redis), 409
when the id is taken.  GET /builds/ID/events replays the job's events and
then follows them (one SSE message per event: `id:` is its seq, `event:`
its type, `data:` the event as JSON), and ends after `finished` or `dead`.
A browser's EventSource that reconnects sends Last-Event-ID, and the
stream goes on after that seq; ?since=N does the same by hand.  When the
HTTP client goes away, Starlette cancels the stream, and the follower's
Redis connection closes with it.  GET /builds/ID is the job's status.
"""
from __future__ import annotations

import json
import os
from typing import Any, AsyncIterator, Dict, Optional, Union

from fastapi import FastAPI, Header, HTTPException, Query
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel

from debate_queue import AsyncClient, Event, JobExists, JobNotFound, JobRejected, Limits
from debate_queue.validate import id_valid


class BuildRequest(BaseModel):
    """What a caller may set; the rest is the worker's default."""

    profile: str
    output: str
    id: Optional[str] = None
    memory: Optional[Union[int, str]] = None
    cpus: Optional[float] = None
    timeout: Optional[float] = None
    warning: Optional[float] = None
    image: Optional[str] = None
    retries: int = 0
    meta: Optional[Dict[str, Any]] = None


def _jsonable(o: Any) -> Any:
    """json.dumps's fallback: bytes (msgpack bin in meta) as text."""
    if isinstance(o, bytes):
        return o.decode("utf-8", "replace")
    return str(o)


def sse(ev: Event) -> str:
    """One event as a Server-Sent Events message."""
    data = json.dumps(ev.to_dict(), default=_jsonable, separators=(",", ":"))
    return f"id: {ev.seq}\nevent: {ev.type}\ndata: {data}\n\n"


def create_app(client: AsyncClient) -> FastAPI:
    """The app, on a client the caller made (tests give their own)."""
    app = FastAPI(title="debate builds")

    @app.on_event("shutdown")
    async def _close() -> None:
        await client.close()

    @app.post("/builds", status_code=201)
    async def submit(req: BuildRequest) -> Dict[str, str]:
        try:
            job = await client.submit(req.profile, req.output, id=req.id, memory=req.memory,
                                      cpus=req.cpus, timeout=req.timeout, warning=req.warning,
                                      image=req.image, retries=req.retries, meta=req.meta)
        except JobRejected as e:
            raise HTTPException(422, {"field": e.field, "reason": e.reason, "message": e.message})
        except JobExists as e:
            raise HTTPException(409, {"id": e.id, "state": e.state, "message": str(e)})
        return {"id": job.id, "events": f"/builds/{job.id}/events"}

    @app.get("/builds/{job_id}")
    async def status(job_id: str) -> JSONResponse:
        if not id_valid(job_id):
            raise HTTPException(400, "not a job id")
        try:
            st = await client.status(job_id)
        except JobNotFound as e:
            raise HTTPException(404, str(e))
        body = {"id": st.id, "state": st.state.value if st.state else None, "worker": st.worker,
                "attempt": st.attempt, "phase": st.phase, "error": st.error,
                "result": st.result.raw if st.result else None}
        return JSONResponse(json.loads(json.dumps(body, default=_jsonable)))

    @app.get("/builds/{job_id}/events")
    async def events(job_id: str, since: int = Query(0, ge=0),
                     last_event_id: Optional[str] = Header(None)) -> StreamingResponse:
        if not id_valid(job_id):
            raise HTTPException(400, "not a job id")
        since_seq = since
        if last_event_id is not None and last_event_id.isdigit():
            since_seq = max(since_seq, int(last_event_id))

        async def stream() -> AsyncIterator[str]:
            async for ev in client.events(job_id, since_seq):
                yield sse(ev)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return app


def _limits_from_env() -> Limits:
    """The workers' worker.ini (DEBATE_WORKER_INI), so submit() checks jobs
    against the limits they enforce; else worker.ini's defaults."""
    ini = os.environ.get("DEBATE_WORKER_INI")
    return Limits.from_ini(ini) if ini else Limits()


app = create_app(AsyncClient(os.environ.get("DEBATE_REDIS_URL", "redis://localhost:6379/0"),
                             namespace=os.environ.get("DEBATE_NAMESPACE", "debate"),
                             limits=_limits_from_env()))
