"""ONNX Runtime sessions for micro-benchmarks and their per-node kernel times (the profiler).

ONNX Runtime's profiler writes one ``<node>_kernel_time`` event per node and run. Nodes that
its graph optimizer fused or inserted carry a changed name (``node_conv_1_token_30``,
``node_matmul/MatmulTransposeFusion/``, ``Transpose_token_75``); :func:`kernel_times_ms`
reports each under the name of the original node it came from when it can tell (the part
before ``/`` or ``_token_``), else under its own name.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Final

import numpy as np
import onnx
import onnxruntime as ort

__all__ = ["kernel_times_ms", "make_session"]

_SUFFIX: Final = re.compile(r"(/.*|_token_\d+)$")


def make_session(
    model: onnx.ModelProto | Path, threads: int, profile_prefix: str | None = None
) -> ort.InferenceSession:
    """A CPU session with every graph optimization, ``threads`` intra-op threads, no spinning.

    Spinning is off as in :class:`dpnet_runtime.backends.ort.OrtRunner`: sessions timed in
    turn must not steal each other's cores.
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def kernel_times_ms(
    model: onnx.ModelProto | Path,
    feed: Mapping[str, np.ndarray],
    *,
    threads: int,
    runs: int = 3,
) -> dict[str, float]:
    """Mean kernel time per run of every node over ``runs`` profiled runs after a warm-up run.

    Returns:
        node name (the original node's where it can tell) -> milliseconds per run.
    """
    with tempfile.TemporaryDirectory(prefix="dpnet-profile-") as folder:
        session = make_session(model, threads, profile_prefix=str(Path(folder) / "run"))
        for _ in range(runs + 1):
            session.run(None, dict(feed))
        events = json.loads(Path(session.end_profiling()).read_text())
    # Each run is a "model_run" event; the kernels of the first (the warm-up) are left out.
    starts = sorted(e["ts"] for e in events if e.get("name") == "model_run")
    warm_up_end = starts[1] if len(starts) > 1 else float("inf")
    times: dict[str, float] = defaultdict(float)
    for event in events:
        name = event.get("name", "")
        if event.get("cat") != "Node" or not name.endswith("_kernel_time"):
            continue
        if event.get("ts", 0) < warm_up_end:
            continue
        node = _SUFFIX.sub("", name.removesuffix("_kernel_time"))
        times[node] += float(event.get("dur", 0)) / 1000.0 / runs
    return dict(times)
