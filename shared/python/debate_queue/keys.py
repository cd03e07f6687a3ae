"""The names of every Redis key of the contract (shared/PROTOCOL.md, "Keys").

Every key lives under one hash tag, ``{ns}``, so a Redis Cluster keeps them
all in one slot; shared/keys.c builds the same names.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    """Key names for one namespace (worker.ini ``[queue] namespace``)."""

    ns: str = "debate"

    @property
    def prefix(self) -> str:
        """``{ns}:``, what every key starts with."""
        return "{" + self.ns + "}:"

    @property
    def queue(self) -> str:
        return self.prefix + "queue"

    @property
    def events(self) -> str:
        return self.prefix + "events"

    @property
    def results(self) -> str:
        return self.prefix + "results"

    @property
    def dead(self) -> str:
        return self.prefix + "dead"

    @property
    def workers(self) -> str:
        return self.prefix + "workers"

    @property
    def cancel(self) -> str:
        return self.prefix + "cancel"

    @property
    def delayed(self) -> str:
        return self.prefix + "delayed"

    def job(self, job_id: str) -> str:
        """The job hash ``{ns}:job:<id>``."""
        return f"{self.prefix}job:{job_id}"

    def log(self, job_id: str) -> str:
        """The job's event stream ``{ns}:log:<id>``."""
        return f"{self.prefix}log:{job_id}"

    def result(self, job_id: str) -> str:
        """The job's own result list ``{ns}:result:<id>``."""
        return f"{self.prefix}result:{job_id}"

    def progress(self, job_id: str) -> str:
        """The job's pub/sub channel ``{ns}:progress:<id>``."""
        return f"{self.prefix}progress:{job_id}"

    def active(self, worker_id: str) -> str:
        """A worker's list of held payloads ``{ns}:active:<worker>``."""
        return f"{self.prefix}active:{worker_id}"

    def worker(self, worker_id: str) -> str:
        """A worker's heartbeat hash ``{ns}:worker:<worker>``."""
        return f"{self.prefix}worker:{worker_id}"
