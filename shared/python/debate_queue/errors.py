"""The exceptions the client raises; all derive from DebateError."""
from __future__ import annotations

from typing import Optional


class DebateError(Exception):
    """Base of every error this package raises on purpose."""


class JobRejected(DebateError, ValueError):
    """A job field the worker would refuse, checked before anything is sent.

    ``reason`` is one of PROTOCOL.md's refusal reasons (``REFUSALS``), the
    one the worker would dead-letter the payload with; ``field`` names the
    field (or ``"payload"``).
    """

    def __init__(self, field: str, reason: str, message: str = "") -> None:
        self.field = field
        self.reason = reason
        self.message = message or f"{field}: refused"
        super().__init__(f"{self.message} ({reason})")


class JobExists(DebateError):
    """submit() with an id whose record (job hash or result) still exists.

    ``state`` is the record's state, or ``"finished"`` when only the result
    is left.  Pick another id, or submit with ``rerun=True`` once it ended.
    """

    def __init__(self, job_id: str, state: str) -> None:
        self.id = job_id
        self.state = state
        super().__init__(f"job {job_id} already exists ({state}): pick another id, "
                         f"or rerun=True once it has ended")


class JobBusy(JobExists):
    """submit(rerun=True) of a job that is still queued or running."""

    def __init__(self, job_id: str, state: str) -> None:
        DebateError.__init__(self, f"job {job_id} is {state}: it can be rerun only once it has ended")
        self.id = job_id
        self.state = state


class JobNotFound(DebateError, KeyError):
    """No job hash, result or event stream for this id (never queued, or expired)."""

    def __init__(self, job_id: str) -> None:
        self.id = job_id
        super().__init__(f"job {job_id} is unknown (no job hash, result or events: "
                         f"it was never queued here, or it expired)")

    def __str__(self) -> str:
        return str(self.args[0])


class JobDead(DebateError):
    """result() of a job that went to the dead letters: it has no result."""

    def __init__(self, job_id: str, error: Optional[str]) -> None:
        self.id = job_id
        self.error = error or ""
        super().__init__(f"job {job_id} is dead: {self.error or 'no reason recorded'}")


class DebateTimeout(DebateError, TimeoutError):
    """A wait gave up after its timeout; the job goes on."""

    def __init__(self, job_id: str, timeout: float, what: str) -> None:
        self.id = job_id
        self.timeout = timeout
        super().__init__(f"{what} for job {job_id} within {timeout:g}s (it goes on)")


class ResultTimeout(DebateTimeout):
    """result() gave up after its timeout."""

    def __init__(self, job_id: str, timeout: float) -> None:
        super().__init__(job_id, timeout, "no result")


class EventsTimeout(DebateTimeout):
    """events(timeout=...) stopped following before the job ended."""

    def __init__(self, job_id: str, timeout: float) -> None:
        super().__init__(job_id, timeout, "no end of the events")


class DeadLetterError(DebateError):
    """retry_dead() could not put the entry back; ``why`` says why.

    why: ``gone`` (no entry at that index, or it was removed meanwhile),
    ``no_payload`` (the entry carries no payload), ``busy`` (the job is
    queued or running), ``not_owner`` (the job record belongs to another
    payload: a duplicate id was refused while the real job existed).
    """

    def __init__(self, index: int, why: str, message: str) -> None:
        self.index = index
        self.why = why
        super().__init__(message)
