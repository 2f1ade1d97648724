"""The TensorRT builder calls of ``dpnet-export trt``: network, flags, profile, timing cache.

Every call follows the Python bindings (``pyCore.cpp``, TensorRT 10.0 to 11.1) and Polygraphy's
``CreateConfig``:

- ``BuilderFlag.TF32`` is cleared unless the plan allows it (TensorRT sets it by default);
- ``add_optimization_profile`` returns -1 for an invalid profile: an :class:`ExportError`;
- the timing cache survives three failures, each a warning and a fresh cache, never a lost
  engine: ``create_timing_cache`` of a corrupt file logs an ERROR and goes on
  (NVIDIA/TensorRT#3566), ``set_timing_cache(..., ignore_mismatch=False)`` returns False for
  a cache from another device or version, and ``get_timing_cache`` may return None;
- TensorRT's warnings and errors reach the user as they come, and a progress monitor
  (``IBuilderConfig.progress_monitor``, TensorRT >= 10) reports each build phase, since a
  build takes minutes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dpnet_export.engine_precision import PrecisionPlan
from dpnet_runtime.backends.trt import capture_logger
from dpnet_runtime.backends.trt_sidecar import TensorProfile
from dpnet_runtime.errors import ExportError
from dpnet_runtime.fileio import atomic_write_bytes

__all__ = ["build_serialized", "progress_monitor"]

Report = Callable[[str], None]
# A phase's step lines at most this often (seconds); phase starts are always reported.
_STEP_INTERVAL_S = 5.0


def build_serialized(
    trt: Any,
    plan: PrecisionPlan,
    profiles: Sequence[TensorProfile],
    *,
    workspace_bytes: int,
    timing_cache: Path | None,
    report: Report,
) -> bytes:
    """Parse ``plan.onnx_path`` and build a serialized engine.

    Args:
        trt: the ``tensorrt`` module.
        plan: graph, typing and flags (:func:`~dpnet_export.engine_precision.plan_precision`).
        profiles: the optimisation profile, one entry per input.
        workspace_bytes: the workspace pool limit.
        timing_cache: the timing-cache file, read before and written after the build.
        report: receives progress lines and TensorRT's warnings and errors.

    Raises:
        ExportError: the parser, the profile or the builder failed (``.log`` has TensorRT's
            messages).
    """
    logger = capture_logger(trt, forward=report)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if plan.strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    # parse_from_file (not parse(bytes)) so external-data files beside the graph are found.
    if not parser.parse_from_file(str(plan.onnx_path)):
        errors = [_parser_error(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ExportError(
            f"TensorRT's ONNX parser rejected {plan.onnx_path} ({len(errors)} error(s)): "
            f"{'; '.join(errors[:3])} (run `dpnet-export check` on it)",
            log="\n".join([*errors, *logger.messages]),
        )
    config = _config(trt, builder, plan, profiles, workspace_bytes, logger)
    if hasattr(trt, "IProgressMonitor"):
        config.progress_monitor = progress_monitor(trt, report)
    _load_timing_cache(config, timing_cache, logger, report)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        tail = " | ".join(logger.messages[-3:]) or "no message from TensorRT"
        raise ExportError(
            f"TensorRT could not build an engine from {plan.onnx_path}: {tail}",
            log="\n".join(logger.messages),
        )
    if timing_cache is not None:
        _save_timing_cache(config, timing_cache, report)
    return bytes(serialized)


def _config(
    trt: Any,
    builder: Any,
    plan: PrecisionPlan,
    profiles: Sequence[TensorProfile],
    workspace_bytes: int,
    logger: Any,
) -> Any:
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if plan.tf32:
        config.set_flag(trt.BuilderFlag.TF32)
    else:
        config.clear_flag(trt.BuilderFlag.TF32)
    for name in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    profile = builder.create_optimization_profile()
    for item in profiles:
        profile.set_shape(item.name, item.min, item.opt, item.max)
    if config.add_optimization_profile(profile) < 0:
        shapes = "; ".join(f"{p.name} {p.min}..{p.max}" for p in profiles)
        raise ExportError(
            f"TensorRT rejected the optimisation profile ({shapes}) of {plan.onnx_path}: "
            "check --batch-range and --shots-range against the graph's inputs",
            log="\n".join(logger.messages),
        )
    return config


def _parser_error(error: Any) -> str:
    return f"node {error.node()} {error.node_name()!r} ({error.node_operator()}): {error.desc()}"


def _load_timing_cache(config: Any, path: Path | None, logger: Any, report: Report) -> None:
    data = path.read_bytes() if path is not None and path.is_file() else b""
    if data:
        errors_before = logger.error_count
        cache = config.create_timing_cache(data)
        usable = cache is not None and logger.error_count == errors_before
        if usable and config.set_timing_cache(cache, ignore_mismatch=False):
            return
        report(
            f"warning: timing cache {path} is corrupt or from another GPU or TensorRT "
            "version; building with a new one (it replaces the file)"
        )
    if not config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False):
        report("warning: TensorRT refused an empty timing cache; building without one")


def _save_timing_cache(config: Any, path: Path, report: Report) -> None:
    cache = config.get_timing_cache()
    if cache is None:
        report(f"warning: TensorRT returned no timing cache; {path} was not updated")
        return
    atomic_write_bytes(path, bytes(cache.serialize()))


def progress_monitor(trt: Any, report: Report) -> Any:
    """A ``trt.IProgressMonitor`` that reports phase starts and, every few seconds, steps.

    Returns:
        The monitor, for ``config.progress_monitor``; it never cancels the build.
    """

    class _Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.start = time.monotonic()
            self.last = 0.0
            self.steps: dict[str, int] = {}

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            self.steps[phase_name] = num_steps
            if parent_phase is None:
                report(f"TensorRT: {phase_name} ({self._elapsed()})")

        def step_complete(self, phase_name: str, step: int) -> bool:
            now = time.monotonic()
            if now - self.last >= _STEP_INTERVAL_S:
                self.last = now
                total = self.steps.get(phase_name, 0)
                report(f"TensorRT: {phase_name} {step + 1}/{total} ({self._elapsed()})")
            return True

        def phase_finish(self, phase_name: str) -> None:
            self.steps.pop(phase_name, None)

        def _elapsed(self) -> str:
            return f"{time.monotonic() - self.start:.0f} s"

    return _Monitor()
