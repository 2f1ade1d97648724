"""CPU time by process of a running dpnet-serve: where each request's CPU goes.

On a machine whose cores the model already fills, every CPU-millisecond spent outside the
query graph is taken from it, so the serving overhead is measured as CPU time per request,
by process: the query-head replicas (the graph plus Serve's call handling), the ingress, Ray
Serve's HTTP proxy and controller, the registry, Ray's own daemons, and the load generator.

:class:`CpuSampler` reads the cumulative user + system CPU time of the server's process tree
(``psutil``) and of this process; :meth:`CpuSampler.delta` gives the CPU seconds each role
spent since the previous sample. A process that ends between two samples takes its time
with it (Ray restarts few processes while a level runs).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Final

from dpnet_runtime.errors import BackendUnavailableError, InputError

__all__ = ["LOAD_GENERATOR", "CpuSampler", "process_role"]

LOAD_GENERATOR: Final = "load generator (this process)"
SERVER: Final = "dpnet-serve (driver)"
# Substrings of a process's command line -> its role; the first match wins.
_ROLES: Final = (
    ("ServeReplica:dpnet:QueryHead", "query head"),
    ("ServeReplica:dpnet:Ingress", "ingress"),
    ("ServeReplica:dpnet:Registry", "registry"),
    ("ServeReplica:dpnet:SupportEncoder", "support encoder"),
    ("ProxyActor", "Serve HTTP proxy"),
    ("ServeController", "Serve controller"),
    ("raylet", "raylet"),
    ("gcs_server", "GCS"),
    ("dashboard/agent.py", "dashboard agent"),
    ("runtime_env/agent", "runtime-env agent"),
    ("log_monitor", "log monitor"),
    ("dashboard", "dashboard"),
)


def process_role(command_line: str) -> str:
    """The role of a process of the server's tree, from its command line."""
    return next((role for key, role in _ROLES if key in command_line), "other Ray workers")


@dataclass
class CpuSampler:
    """Cumulative CPU seconds of a server's process tree and of this process, by role.

    Args:
        server_pid: PID of the ``dpnet-serve`` process (its children are Ray's processes).

    Raises:
        InputError: no process has that PID.
        BackendUnavailableError: psutil is not installed.
    """

    server_pid: int
    _last: dict[int, float] = field(default_factory=dict)
    _roles: dict[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        try:
            import psutil
        except ImportError as exc:
            raise BackendUnavailableError("--server-pid needs psutil: pip install psutil") from exc
        if not psutil.pid_exists(self.server_pid):
            raise InputError(f"--server-pid {self.server_pid}: no such process")
        self.delta()

    def delta(self) -> dict[str, float]:
        """CPU seconds spent by each role since the previous call (the first call: since start).

        Returns:
            role -> seconds, every role of the tree (0.0 when idle) and :data:`LOAD_GENERATOR`.
        """
        now = self._sample()
        spent: dict[str, float] = {}
        for pid, seconds in now.items():
            role = self._roles[pid]
            spent[role] = spent.get(role, 0.0) + seconds - self._last.get(pid, 0.0)
        self._last = now
        return dict(sorted(spent.items(), key=lambda item: -item[1]))

    def _sample(self) -> dict[int, float]:
        import psutil

        times: dict[int, float] = {}
        try:
            root = psutil.Process(self.server_pid)
            tree = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            tree = []
        for process in [*tree, psutil.Process(os.getpid())]:
            try:
                with process.oneshot():
                    cpu = process.cpu_times()
                    if process.pid not in self._roles:
                        self._roles[process.pid] = self._role(process)
            except psutil.Error:
                continue
            times[process.pid] = cpu.user + cpu.system
        return times

    def _role(self, process: Any) -> str:  # a psutil.Process
        if process.pid == os.getpid():
            return LOAD_GENERATOR
        if process.pid == self.server_pid:
            return SERVER
        return process_role(" ".join(process.cmdline()))
