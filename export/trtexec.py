"""The ``trtexec`` command line equivalent to a ``dpnet-export trt`` build.

For users who build engines with NVIDIA's own tool: the same graph, profile, precision,
TF32 setting, workspace and timing cache, spelled with trtexec's flags
(``--memPoolSize=workspace:<MiB>`` replaced ``--workspace`` in TensorRT 10; ``--stronglyTyped``
is a no-op that is always on in TensorRT 11, and ``--fp16`` no longer exists there; trtexec
enables TF32 unless given ``--noTF32``). The engine it writes gets its sidecar from
``dpnet-export trt --adopt``.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path

from dpnet_runtime.backends.trt_sidecar import TensorProfile

__all__ = ["format_shapes", "trtexec_command"]

_MIB = 1 << 20
# trtexec's spelling of each trt.BuilderFlag a precision plan may set.
_FLAG_OPTIONS = {"FP16": "--fp16", "INT8": "--int8"}


def format_shapes(profiles: Sequence[TensorProfile], which: str) -> str:
    """trtexec's shape list, e.g. ``support_images:1x1x3x321x321,query_image:1x3x321x321``.

    Args:
        profiles: one per input.
        which: ``"min"``, ``"opt"`` or ``"max"``.
    """
    return ",".join(
        f"{profile.name}:{'x'.join(str(dim) for dim in getattr(profile, which))}"
        for profile in profiles
    )


def trtexec_command(
    *,
    onnx_path: Path,
    engine_path: Path,
    profiles: Sequence[TensorProfile],
    strongly_typed: bool,
    builder_flags: Sequence[str] = (),
    tf32: bool = False,
    workspace_bytes: int,
    timing_cache: Path | None = None,
) -> str:
    """The shell-quoted trtexec command line.

    Args:
        onnx_path: the graph to parse (the FP16 copy for a strongly typed FP16 build).
        engine_path: where trtexec saves the engine.
        profiles: the optimisation profile, one entry per input.
        strongly_typed: add ``--stronglyTyped``.
        builder_flags: ``trt.BuilderFlag`` names (``"FP16"`` -> ``--fp16``, weak typing).
        tf32: leave TF32 on; otherwise add ``--noTF32``.
        workspace_bytes: workspace pool limit, rounded up to whole MiB.
        timing_cache: timing-cache file to read and update.

    >>> p = [TensorProfile("x", (1, 3), (2, 3), (4, 3))]
    >>> command = trtexec_command(onnx_path=Path("m.onnx"), engine_path=Path("m.engine"),
    ...     profiles=p, strongly_typed=True, workspace_bytes=1 << 30)
    >>> command.split()[5:]
    ['--maxShapes=x:4x3', '--memPoolSize=workspace:1024', '--stronglyTyped', '--noTF32']
    """
    args = ["trtexec", f"--onnx={onnx_path}", f"--saveEngine={engine_path}"]
    if profiles:
        args += [
            f"--{which}Shapes={format_shapes(profiles, which)}" for which in ("min", "opt", "max")
        ]
    args.append(f"--memPoolSize=workspace:{-(-workspace_bytes // _MIB)}")
    if strongly_typed:
        args.append("--stronglyTyped")
    args += [_FLAG_OPTIONS[flag] for flag in builder_flags]
    if not tf32:
        args.append("--noTF32")
    if timing_cache is not None:
        args.append(f"--timingCacheFile={timing_cache}")
    return shlex.join(args)
