"""A real dpnet-serve in a subprocess on 127.0.0.1, and the episodes the server tests send.

Each server is the ``dpnet-serve`` console script with its own local Ray (node address
127.0.0.1, no dashboard, usage statistics off, Ray's files in a private temporary folder). It is
stopped by SIGTERM to its PID; any process it started that outlives it is killed by PID.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import queue
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch

from dpnet.checkpoint import make_meta, save_checkpoint
from dpnet.config import preset
from dpnet.data import build_dataset
from dpnet.data.episode import Episode
from dpnet.model.dpnet import build_dpnet
from dpnet_export.torch_to_onnx import ExportOptions, export_onnx
from dpnet_runtime import Predictor
from dpnet_runtime.preprocess import normalize_images

TINY_SIZE = 129
MAX_SHOTS = 3  # of the session's server
MAX_PIXELS = 200 * 200
START_TIMEOUT_S = 240.0
STOP_TIMEOUT_S = 90.0
_URL_LINE = re.compile(r"dpnet-serve: serving (http://\S+)")


@dataclass
class Server:
    """A running ``dpnet-serve`` process and what it printed."""

    url: str
    process: subprocess.Popen[str]
    ray_dir: Path
    lines: list[str] = field(default_factory=list)

    def processes(self) -> list[psutil.Process]:
        """The server and every process it started (Ray's GCS, raylet, workers)."""
        return process_tree(self.process)

    def replica_pids(self, deployment: str) -> list[int]:
        """PIDs of the Ray Serve replicas of ``deployment`` among the server's processes."""
        return replica_pids(self.processes(), deployment)


def replica_pids(processes: list[psutil.Process], deployment: str) -> list[int]:
    """PIDs of the Ray Serve replicas of ``deployment`` (their process title names it)."""
    pids = []
    for process in processes:
        try:
            title = " ".join(process.cmdline())
        except psutil.Error:
            continue
        if f"ServeReplica:dpnet:{deployment}" in title:
            pids.append(process.pid)
    return pids


def assert_loopback_sockets(processes: list[psutil.Process]) -> None:
    """Every socket of ``processes`` (bound or connected) is on a loopback address."""
    sockets = []
    for process in processes:
        try:
            sockets += [(process.pid, conn) for conn in process.net_connections(kind="inet")]
        except psutil.NoSuchProcess:
            continue
    assert len(sockets) > 5  # the proxy, GCS, raylet and workers listen and talk
    for pid, conn in sockets:
        for address in (conn.laddr, conn.raddr):
            if address:
                assert _loopback(address.ip), (pid, conn)


def _loopback(ip: str) -> bool:
    # A wildcard bind (0.0.0.0, ::) is not loopback; ::ffff:127.0.0.1 is IPv4's loopback.
    address = ipaddress.ip_address(ip)
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    return (mapped or address).is_loopback


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_server(
    model: Path, *options: str, environment: Mapping[str, str] | None = None
) -> Server:
    """Run ``dpnet-serve --model MODEL OPTIONS`` and wait (bounded) for its URL line.

    Args:
        model: the export directory.
        options: more command-line arguments.
        environment: variables added to this process's environment.

    Raises:
        AssertionError: the server exited or printed no URL within ``START_TIMEOUT_S``.
    """
    ray_dir = tempfile.mkdtemp(prefix="dpr", dir="/tmp")  # short: Ray's socket paths are limited
    variables = {"RAY_TMPDIR": ray_dir, "PYTHONUNBUFFERED": "1", **(environment or {})}
    command = [
        sys.executable, "-c", "from dpnet_serve.cli import main; main()",
        "--model", str(model), "--port", str(free_port()), *options,
    ]  # fmt: skip
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **variables},
    )
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_pump, args=(process, lines), daemon=True).start()
    server = Server(url="", process=process, ray_dir=Path(ray_dir))
    deadline = time.monotonic() + START_TIMEOUT_S
    while not server.url and time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1.0)
        except queue.Empty:
            continue
        if line is None:
            break
        server.lines.append(line)
        if match := _URL_LINE.search(line):
            server.url = match.group(1)
    if not server.url:
        stop_server(server)
        raise AssertionError("dpnet-serve did not start:\n" + "".join(server.lines[-40:]))
    threading.Thread(target=_collect, args=(lines, server.lines), daemon=True).start()
    return server


def stop_server(server: Server) -> int | None:
    """Stop the server and what it started (:func:`terminate_tree`); remove its Ray folder.

    Returns:
        The server's exit code, or ``None`` when it had to be killed.
    """
    return terminate_tree(server.process, server.ray_dir)


def process_tree(process: subprocess.Popen[str]) -> list[psutil.Process]:
    """``process`` and every process it started, recursively."""
    root = psutil.Process(process.pid)
    return [root, *root.children(recursive=True)]


def terminate_tree(process: subprocess.Popen[str], ray_dir: Path) -> int | None:
    """SIGTERM ``process``, wait (bounded), kill by PID whatever it started and left, and
    remove ``ray_dir``.

    Returns:
        The exit code, or ``None`` when the process had to be killed.
    """
    try:
        started = process_tree(process)[1:]
    except psutil.NoSuchProcess:
        started = []
    code: int | None = None
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        code = process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=30)
    for child in started:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    psutil.wait_procs(started, timeout=30)
    shutil.rmtree(ray_dir, ignore_errors=True)
    return code


def _pump(process: subprocess.Popen[str], lines: queue.Queue[str | None]) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        lines.put(line)
    lines.put(None)


def _collect(lines: queue.Queue[str | None], into: list[str]) -> None:
    while (line := lines.get()) is not None:
        into.append(line)


@pytest.fixture(scope="session")
def episodes() -> list[Episode]:
    """Four synthetic 2-shot episodes at the tiny model's size (masks 0/1, ignore dropped)."""
    dataset = build_dataset(
        "synthetic", root=None, fold=0, split="val", shots=2, seed=3, episodes=4,
        image_size=TINY_SIZE,
    )  # fmt: skip
    return [dataset[index] for index in range(len(dataset))]


@pytest.fixture(scope="session")
def balanced_export_dir(episodes: list[Episode], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random DPNet whose classifier bias is set so that about half of the episodes'
    query pixels are object: masks with real boundaries, so comparing them means something
    (a random model, trained or not for a few steps, predicts one class almost everywhere)."""
    torch.manual_seed(0)
    model = build_dpnet(preset("tiny"), pretrained_backbone=False).eval()
    to_tensor = torch.from_numpy
    with torch.no_grad():
        logits = model(
            to_tensor(normalize_images(np.stack([np.stack(e.support_images) for e in episodes]))),
            to_tensor(np.stack([np.stack(support_masks(e)) for e in episodes]).astype(np.float32)),
            to_tensor(normalize_images(np.stack([e.query_image for e in episodes]))),
        )
        bias = model.decoder.classifier.bias
        assert bias is not None
        bias[0] += float((logits[:, 1] - logits[:, 0]).median())
    folder = tmp_path_factory.mktemp("balanced")
    checkpoint = folder / "balanced.pt"
    save_checkpoint(checkpoint, model, make_meta(dataset="synthetic", fold=0, shots=2, epoch=0))
    export_onnx(checkpoint, folder / "export", ExportOptions())
    return folder / "export"


def support_masks(episode: Episode) -> list[np.ndarray]:
    """The episode's support masks as 0/1 (the ignore label 255 counts as background)."""
    return [(mask == 1).astype(np.uint8) for mask in episode.support_masks]


@pytest.fixture
def stopped_servers() -> Iterator[list[Server]]:
    """Servers a test starts; every one still running is stopped when the test ends."""
    servers: list[Server] = []
    yield servers
    for server in servers:
        if server.process.poll() is None:
            stop_server(server)


@pytest.fixture(scope="session")
def server(balanced_export_dir: Path) -> Iterator[Server]:
    """One dpnet-serve for the session: two query-head replicas of one thread, batches of up
    to 4, at most MAX_SHOTS shots and MAX_PIXELS pixels per image."""
    running = start_server(
        balanced_export_dir,
        "--replicas", "2", "--threads", "1", "--max-batch", "4", "--batch-wait-ms", "5",
        "--max-shots", str(MAX_SHOTS), "--max-image-pixels", str(MAX_PIXELS),
    )  # fmt: skip
    yield running
    stop_server(running)


@pytest.fixture(scope="session")
def predictor(balanced_export_dir: Path) -> Iterator[Predictor]:
    """The in-process Predictor on the server's export (the expected masks)."""
    with Predictor.open(balanced_export_dir, intra_op_threads=1) as opened:
        yield opened


_START_TIMEOUT_S = 180.0
# Block SIGTERM only after Ray has started its GCS and raylet, so they do not inherit the mask.
_HEAD = """
import signal, ray
ray.init(_node_ip_address="127.0.0.1", include_dashboard=False, num_cpus=4,
         logging_level="WARNING")
print("GCS", ray.get_runtime_context().gcs_address, flush=True)
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
signal.sigwait({signal.SIGTERM})
ray.shutdown()
"""


@dataclass
class Head:
    """A Ray head on 127.0.0.1 and the GCS address other jobs join it at."""

    process: subprocess.Popen[str]
    address: str
    ray_dir: Path
    token: dict[str, str]

    def processes(self) -> list[psutil.Process]:
        return process_tree(self.process)


def start_head(environment: Mapping[str, str] | None = None) -> Head:
    """A Ray head on 127.0.0.1 with token authentication, in a Python process of the test's
    own, as another job on a shared cluster would be; its token is given by environment, never
    written to ``~/.ray``. ``environment`` is added to what its processes inherit."""
    ray_dir = Path(tempfile.mkdtemp(prefix="dph", dir="/tmp"))  # Ray's socket paths are short
    token = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    variables = {
        **os.environ,
        **token,
        "RAY_TMPDIR": str(ray_dir),
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_USAGE_STATS_ENABLED": "0",
        **(environment or {}),
    }
    process = subprocess.Popen(
        [sys.executable, "-c", _HEAD], stdout=subprocess.PIPE, text=True, env=variables
    )
    return Head(process, _gcs_address(process), ray_dir, token)


@pytest.fixture
def head() -> Iterator[Head]:
    """A Ray head (:func:`start_head`), stopped by SIGTERM to its PID, then whatever it
    started, by PID."""
    started = start_head()
    try:
        yield started
    finally:
        terminate_tree(started.process, started.ray_dir)


def _gcs_address(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    deadline = time.monotonic() + _START_TIMEOUT_S
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if line.startswith("GCS "):
            return line.split()[1]
        if not line and process.poll() is not None:
            break
    process.kill()
    raise AssertionError("the Ray head did not start")


@contextlib.contextmanager
def unwritable(path: Path) -> Iterator[None]:
    """Make ``path`` refuse changes for real: immutable (``chattr +i``) as root, who ignores
    permission bits, read-only permissions otherwise."""
    if os.geteuid() == 0:
        done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot make {path} immutable here: {done.stderr.strip()}")
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(path)], check=True)
    else:
        mode = path.stat().st_mode
        path.chmod(0o555 if path.is_dir() else 0o444)
        try:
            yield
        finally:
            path.chmod(mode)
