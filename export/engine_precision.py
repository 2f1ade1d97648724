"""How the installed TensorRT builds the requested precision: the graph, typing and flags.

- **Strongly typed FP16** (TensorRT 10 and 11): the mixed-precision ``*_fp16.onnx`` graph,
  whose CCM, L2 norms, discriminator, z-score and softmax/ArgMax ``onnx_to_fp16`` keeps in
  FP32 on purpose, is built with ``NetworkDefinitionCreationFlag.STRONGLY_TYPED``: TensorRT
  keeps every tensor's type as the graph says. Whenever that file exists it is used.
- **Weak typing** (TensorRT 10 only, ``weak_typing=True``, ``--weak-typing``): the FP32 graph
  with ``BuilderFlag.FP16``, "FP16 layer selection with FP32 fallback", deprecated in 10.12
  and removed in 11. The builder may then run the CCM similarity and the L2 norms in FP16;
  an explicit fallback for TensorRT 10 users without the FP16 graph, never chosen silently.
- **TF32** is off unless asked for (``tf32=True``, ``--tf32``): TensorRT enables it by
  default (``NvInfer.h``: kTF32 "Enabled by default"), and TF32's 10-bit mantissas flip the
  CCM's ArgMax over near-ties of its 1024-d similarity, in FP32 engines and in the FP32
  layers kept inside FP16 ones. trtexec needs ``--noTF32`` for the same.

:class:`PrecisionPlan` names builder flags as strings (``"FP16"``), so a new precision adds a
branch to :func:`plan_precision` and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

from dpnet_runtime import contract
from dpnet_runtime.backends.trt import tensorrt_major
from dpnet_runtime.contract import PRECISIONS
from dpnet_runtime.errors import InputError

__all__ = ["PrecisionPlan", "plan_precision"]

_MIN_TENSORRT_MAJOR: Final = 10


@dataclass(frozen=True)
class PrecisionPlan:
    """How one engine build gets its precision.

    Attributes:
        onnx_path: the graph to parse (the ``*_fp16.onnx`` copy for strongly typed FP16).
        precision: one of ``contract.PRECISIONS``.
        strongly_typed: create the network with ``STRONGLY_TYPED``.
        builder_flags: ``trt.BuilderFlag`` names to set (``("FP16",)`` for weak typing).
        tf32: leave ``BuilderFlag.TF32`` on (it is cleared otherwise).
    """

    onnx_path: Path
    precision: str
    strongly_typed: bool
    builder_flags: tuple[str, ...] = ()
    tf32: bool = False


def plan_precision(
    onnx_path: Path,
    *,
    precision: str,
    tensorrt_version: str,
    weak_typing: bool = False,
    tf32: bool = False,
) -> PrecisionPlan:
    """Choose the graph, typing and flags for ``precision`` on that TensorRT version.

    Args:
        onnx_path: the graph given on the command line (``dpnet.onnx`` or ``dpnet_fp16.onnx``).
        precision: ``"fp32"`` or ``"fp16"``.
        tensorrt_version: the installed (or targeted) TensorRT version.
        weak_typing: FP16 from the FP32 graph with ``BuilderFlag.FP16`` (TensorRT 10 only).
        tf32: allow TF32 in FP32 layers.

    Raises:
        InputError: an unknown precision, TensorRT older than 10, FP32 asked of an FP16 graph,
            weak typing on TensorRT 11 or of the FP16 graph, or the FP16 graph missing.
    """
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    major = tensorrt_major(tensorrt_version)
    if major < _MIN_TENSORRT_MAJOR:
        raise InputError(
            f"TensorRT {tensorrt_version} is too old; dpnet needs TensorRT 10 or newer"
        )
    fp16_tag = contract.find_format("ort", "fp16").tag
    is_fp16_graph = onnx_path.stem.endswith(fp16_tag)
    if is_fp16_graph and precision != "fp16":
        raise InputError(
            f"{onnx_path} is the mixed-precision graph: add --fp16, or pass the FP32 graph"
        )
    if weak_typing and (precision != "fp16" or is_fp16_graph or major > _MIN_TENSORRT_MAJOR):
        raise InputError(
            "--weak-typing builds FP16 from the FP32 graph with BuilderFlag.FP16, which only "
            f"TensorRT 10 has (here {tensorrt_version}): use it with --fp16 and dpnet.onnx"
        )
    if precision == "fp32":
        return PrecisionPlan(onnx_path, "fp32", major > _MIN_TENSORRT_MAJOR, tf32=tf32)
    if weak_typing:
        return PrecisionPlan(onnx_path, "fp16", False, ("FP16",), tf32=tf32)
    fp16_path = onnx_path
    if not is_fp16_graph:
        fp16_path = onnx_path.with_name(f"{onnx_path.stem}{fp16_tag}.onnx")
    if not fp16_path.is_file():
        on_10 = major == _MIN_TENSORRT_MAJOR
        fallback = " or add --weak-typing (TensorRT 10 only)" if on_10 else ""
        raise InputError(
            f"FP16 engines are built strongly typed from the mixed-precision graph {fp16_path}, "
            f"which is missing: run `dpnet-export onnx --fp16` first{fallback}"
        )
    return PrecisionPlan(fp16_path, "fp16", True, tf32=tf32)
