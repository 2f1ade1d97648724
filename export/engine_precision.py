"""How the installed TensorRT builds the requested precision: the graph, typing and flags.

- **Strongly typed FP16** (TensorRT 10 and 11): the mixed-precision ``*_fp16.onnx`` graph,
  whose CCM, L2 norms, discriminator, z-score and softmax/ArgMax ``onnx_to_fp16`` keeps in
  FP32 on purpose, is built with ``NetworkDefinitionCreationFlag.STRONGLY_TYPED``: TensorRT
  keeps every tensor's type as the graph says. Whenever that file exists it is used.
- **Weak typing** (TensorRT 10 only, ``weak_typing=True``, ``--weak-typing``): the FP32 graph
  with ``BuilderFlag.FP16``, "FP16 layer selection with FP32 fallback", deprecated in 10.12
  and removed in 11. The builder may then run the CCM similarity and the L2 norms in FP16;
  an explicit fallback for TensorRT 10 users without the FP16 graph, never chosen silently.
- **INT8** (TensorRT 10 and 11): explicit quantization. The TensorRT-flavoured QDQ graph
  (``*_int8_trt.onnx``, the source of the ``trt-int8`` row; symmetric INT8 Q/DQ written by
  ``onnx_to_int8``) is built strongly typed with no precision flag: the Q/DQ scales say where
  INT8 runs and every other layer (the CCM among them) keeps the graph's FP32 type.
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
        onnx_path: the graph to parse (the ``*_fp16.onnx`` copy for strongly typed FP16, the
            ``*_int8_trt.onnx`` QDQ graph for INT8).
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
        onnx_path: the graph given on the command line (``dpnet.onnx``, ``dpnet_fp16.onnx`` or
            ``dpnet_int8_trt.onnx``).
        precision: ``"fp32"``, ``"fp16"`` or ``"int8"``.
        tensorrt_version: the installed (or targeted) TensorRT version.
        weak_typing: FP16 from the FP32 graph with ``BuilderFlag.FP16`` (TensorRT 10 only).
        tf32: allow TF32 in FP32 layers.

    Raises:
        InputError: an unknown precision, TensorRT older than 10, FP32 asked of an FP16 graph,
            another precision asked of the INT8 graph, weak typing on TensorRT 11 or of the
            FP16 or INT8 graph, or the FP16 (INT8) graph missing.
    """
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    major = tensorrt_major(tensorrt_version)
    if major < _MIN_TENSORRT_MAJOR:
        raise InputError(
            f"TensorRT {tensorrt_version} is too old; dpnet needs TensorRT 10 or newer"
        )
    fp16_tag = contract.find_format("trt", "fp16").source_tag
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
    int8_tag = contract.find_format("trt", "int8").source_tag
    if precision == "int8" or onnx_path.stem.endswith(int8_tag):
        return _int8_plan(onnx_path, precision, int8_tag, tf32=tf32)
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


def _int8_plan(onnx_path: Path, precision: str, int8_tag: str, *, tf32: bool) -> PrecisionPlan:
    # Explicit quantization: the QDQ graph, strongly typed, on TensorRT 10 and 11 alike.
    if precision != "int8":
        raise InputError(f"{onnx_path} is the INT8 QDQ graph: add --int8, or pass dpnet.onnx")
    source = onnx_path
    if not onnx_path.stem.endswith(int8_tag):
        source = onnx_path.with_name(f"{onnx_path.stem}{int8_tag}.onnx")
    if not source.is_file():
        raise InputError(
            f"INT8 engines are built from the TensorRT-flavoured QDQ graph {source}, which is "
            "missing: run `dpnet-export onnx --int8` first"
        )
    return PrecisionPlan(source, "int8", True, tf32=tf32)
