"""Container runtimes the worker can drive: podman (the shared test image)
and a private dockerd under a temporary directory."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from typing import Any, Dict, List, Mapping, Optional, Sequence

import pytest

from .env import CONTAINERS_CONF, REPO, TEST_IMAGE


def runtime_containers(runtime_cmd: Sequence[str], label: str, env: Optional[Mapping[str, str]] = None) -> List[str]:
    """Names of containers (running or not) carrying label, via the runtime itself."""
    out = subprocess.run([*runtime_cmd, "ps", "--all", "--filter", f"label={label}", "--format", "{{.Names}}"],
                         capture_output=True, text=True, env=env, timeout=60)
    return [x for x in out.stdout.split() if x]


def remove_containers(runtime_cmd: Sequence[str], label: str, env: Optional[Mapping[str, str]] = None,
                      timeout: float = 120) -> None:
    """rm --force every container carrying label."""
    for name in runtime_containers(runtime_cmd, label, env):
        subprocess.run([*runtime_cmd, "rm", "--force", name], capture_output=True, env=env, timeout=timeout)


def podman_env() -> Dict[str, str]:
    """This environment with the tests' containers.conf for podman."""
    return dict(os.environ, CONTAINERS_CONF=CONTAINERS_CONF)


class Runtime:
    """A container runtime the worker can drive: its worker.ini lines and env."""

    def __init__(self, name: str, cmd: List[str], env: Optional[Dict[str, str]], ini: Dict[str, Any]) -> None:
        self.name = name
        self.cmd = cmd          # argv prefix to run the runtime by hand
        self.env = env          # environment for the worker and for cmd
        self.ini = ini          # [sandbox] keys

    def containers(self, label: str) -> List[str]:
        return runtime_containers(self.cmd, label, self.env)

    def with_env(self, **env: str) -> "Runtime":
        """The same runtime with more environment for the worker (and cmd)."""
        return Runtime(self.name, self.cmd, dict(self.env or {}, **env), self.ini)

    def cleanup(self, ns: str) -> None:
        """Remove every container of namespace ns."""
        remove_containers(self.cmd, f"debate.ns={ns}", self.env)


def podman_runtime() -> Runtime:
    """podman with the test image built (scripts/make-test-image); fails the test without podman."""
    env = podman_env()
    if shutil.which("podman") is None:
        pytest.fail("podman is not installed (scripts/install-deps installs it)")
    subprocess.run([str(REPO / "scripts" / "make-test-image"), "podman"], check=True, env=env,
                   capture_output=True, timeout=300)
    return Runtime("podman", ["podman"], env,
                   {"runtime": "podman", "image": TEST_IMAGE, "sudo": "no"})


class Dockerd:
    """A private dockerd under a temp dir (scripts/start-dockerd)."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="debate-dockerd-")
        self.reason: Optional[str] = None
        self.env: Optional[Dict[str, str]] = None

    def start(self) -> bool:
        """True when it runs with the test image; else False and .reason says why."""
        if shutil.which("dockerd") is None:
            self.reason = "dockerd is not installed"
            return False
        p = subprocess.run([str(REPO / "scripts" / "start-dockerd"), self.dir], capture_output=True,
                           text=True, timeout=120)
        if p.returncode != 0:
            self.reason = f"dockerd could not start here: {p.stderr.strip()[-500:]}"
            return False
        self.env = dict(os.environ, DOCKER_HOST=f"unix://{self.dir}/docker.sock")
        subprocess.run([str(REPO / "scripts" / "make-test-image"), "docker"], check=True, env=self.env,
                       capture_output=True, timeout=300)
        return True

    def stop(self) -> None:
        subprocess.run([str(REPO / "scripts" / "start-dockerd"), "--stop", self.dir], capture_output=True,
                       timeout=180)
        shutil.rmtree(self.dir, ignore_errors=True)

    def runtime(self) -> Runtime:
        return Runtime("docker", ["docker"], self.env,
                       {"runtime": "docker", "image": TEST_IMAGE, "sudo": "no"})
