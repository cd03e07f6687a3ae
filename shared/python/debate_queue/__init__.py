"""debate_queue: the Python client of the debate build queue.

The reference client of the wire contract (shared/PROTOCOL.md), beside the
C one (`enqueue`).  ``Client`` is synchronous, ``AsyncClient`` the same on
asyncio; both submit jobs (checked locally by the worker's own rules),
wait for results, follow events, cancel, and read the queue, the workers
and the dead letters.
"""
from .aio import AsyncClient
from .client import Client
from .errors import (DeadLetterError, DebateError, DebateTimeout, EventsTimeout, JobBusy, JobDead,
                     JobExists, JobNotFound, JobRejected, ResultTimeout)
from .keys import Keys
from .types import (FINAL_STATES, Artifact, DeadLetter, Event, Job, JobStatus, QueuedJob, QueueInfo,
                    Result, Status, WorkerInfo)
from .validate import CLIENT_REFUSALS, REFUSALS, Limits, build_payload, check_payload, refusal

__version__ = "1.0.0"
PROTOCOL_VERSION = 1

__all__ = [
    "Client", "AsyncClient", "Keys", "Limits",
    "Status", "FINAL_STATES", "Artifact", "Result", "Event", "JobStatus", "WorkerInfo", "DeadLetter",
    "QueueInfo", "QueuedJob", "Job",
    "DebateError", "JobRejected", "JobExists", "JobBusy", "JobNotFound", "JobDead", "DebateTimeout",
    "ResultTimeout", "EventsTimeout", "DeadLetterError",
    "REFUSALS", "CLIENT_REFUSALS", "build_payload", "check_payload", "refusal",
    "__version__", "PROTOCOL_VERSION",
]
