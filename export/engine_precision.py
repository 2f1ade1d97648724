"""How the installed TensorRT builds a row of ``contract.FORMATS``: the graph, typing and flags.

Every ``trt`` row names the ONNX graphs it is built from (``Format.onnx_name``), so the plan is
read off the table, with no branch per precision:

- **Strongly typed** (TensorRT 10 and 11): the row's own source graph (``dpnet.onnx`` for FP32,
  the mixed-precision ``dpnet_fp16.onnx`` whose CCM, L2 norms, discriminator, z-score and
  softmax/ArgMax ``onnx_to_fp16`` keeps in FP32 on purpose, the symmetric S8S8 QDQ
  ``dpnet_int8_trt.onnx``) is built with ``NetworkDefinitionCreationFlag.STRONGLY_TYPED``:
  TensorRT keeps every tensor's type as the graph says (for INT8, the Q/DQ scales say where
  INT8 runs: explicit quantization). FP32 is strongly typed on TensorRT 11, which removed weak
  typing; TensorRT 10 builds it weakly typed with no precision flag (the same engine).
- **Weak typing** (TensorRT 10 only, ``weak_typing=True``, ``--weak-typing``): the FP32 graph
  with the precision's ``BuilderFlag`` (``FP16``), "layer selection with FP32 fallback",
  deprecated in 10.12 and removed in 11. The builder may then run the CCM similarity and the
  L2 norms in FP16; an explicit fallback, never chosen silently, and not for calibrated rows
  (weakly typed INT8 would need a calibrator).
- **TF32** is off unless asked for (``tf32=True``, ``--tf32``): TensorRT enables it by
  default (``NvInfer.h``: kTF32 "Enabled by default"), and TF32's 10-bit mantissas flip the
  CCM's ArgMax over near-ties of its 1024-d similarity, in FP32 engines and in the FP32
  layers kept inside FP16 ones. trtexec needs ``--noTF32`` for the same.

The source graph must record the precision it is read for (``META_PRECISION``): a renamed
graph is refused before TensorRT spends minutes on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

import onnx

from dpnet_runtime import contract
from dpnet_runtime.backends.trt import tensorrt_major
from dpnet_runtime.contract import EPISODE, GRAPHS, SOURCE_PRECISION, Format
from dpnet_runtime.errors import IncompatibleModelError, InputError, ModelFileError, OptionError

__all__ = ["PrecisionPlan", "engine_format", "plan_precision"]

_MIN_TENSORRT_MAJOR: Final = 10
_BACKEND: Final = "trt"


@dataclass(frozen=True)
class PrecisionPlan:
    """How one engine build gets its precision.

    Attributes:
        onnx_path: the graph to parse (the row's source graph; the FP32 one for weak typing).
        precision: the engine's precision, its row's.
        strongly_typed: create the network with ``STRONGLY_TYPED``.
        builder_flags: ``trt.BuilderFlag`` names to set (``("FP16",)`` for weak typing).
        tf32: leave ``BuilderFlag.TF32`` on (it is cleared otherwise).
    """

    onnx_path: Path
    precision: str
    strongly_typed: bool
    builder_flags: tuple[str, ...] = ()
    tf32: bool = False


def engine_format(precision: str) -> Format:
    """The ``trt`` row of ``precision``.

    Raises:
        OptionError: no such row; the message lists the engine precisions.
    """
    try:
        return contract.find_format(_BACKEND, precision)
    except ValueError as exc:
        raise OptionError(str(exc)) from exc


def plan_precision(
    model_dir: Path,
    *,
    precision: str,
    tensorrt_version: str,
    graph: str = EPISODE,
    weak_typing: bool = False,
    tf32: bool = False,
) -> PrecisionPlan:
    """Choose the graph, typing and flags of the ``trt`` row of ``precision``.

    Args:
        model_dir: the export folder (``dpnet-export onnx --out``).
        precision: the engine's precision, a ``trt`` row of ``contract.FORMATS``.
        graph: the graph role to build (``episode``; ``support`` / ``query`` for Triton).
        tensorrt_version: the installed (or targeted) TensorRT version.
        weak_typing: build from the FP32 graph with the precision's ``BuilderFlag``
            (TensorRT 10 only).
        tf32: allow TF32 in FP32 layers.

    Raises:
        InputError: an unknown precision, TensorRT older than 10, weak typing on TensorRT 11
            or for FP32 or a calibrated precision, or the source graph missing.
        IncompatibleModelError: the source graph records another precision.
        ModelFileError: the source graph is not ONNX.
    """
    fmt = engine_format(precision)
    major = tensorrt_major(tensorrt_version)
    if major < _MIN_TENSORRT_MAJOR:
        raise InputError(
            f"TensorRT {tensorrt_version} is too old; dpnet needs TensorRT 10 or newer"
        )
    if graph not in GRAPHS:
        raise InputError(f"graph must be one of {', '.join(GRAPHS)}, got {graph!r}")
    if weak_typing:
        return _weak_plan(model_dir, graph, fmt, tensorrt_version, major, tf32=tf32)
    source = model_dir / fmt.onnx_name(graph)
    weak = major == _MIN_TENSORRT_MAJOR and _weak_typing_builds(fmt)
    _check_source(source, fmt.precision, fmt.make, " or add --weak-typing" if weak else "")
    typed = major > _MIN_TENSORRT_MAJOR or fmt.precision != SOURCE_PRECISION
    return PrecisionPlan(source, fmt.precision, typed, tf32=tf32)


def _weak_plan(
    model_dir: Path, graph: str, fmt: Format, version: str, major: int, *, tf32: bool
) -> PrecisionPlan:
    # TensorRT 10's precision flags on the FP32 graph; refused where they mean something else.
    if major > _MIN_TENSORRT_MAJOR or not _weak_typing_builds(fmt):
        raise InputError(
            "--weak-typing builds a lower precision from the FP32 graph with its BuilderFlag, "
            f"which only TensorRT 10 has (here {version}) and only for uncalibrated precisions "
            f"(not {fmt.precision}): drop --weak-typing"
        )
    fp32 = contract.find_format(_BACKEND, SOURCE_PRECISION)
    source = model_dir / fp32.onnx_name(graph)
    _check_source(source, SOURCE_PRECISION, fp32.make)
    flags = (fmt.precision.upper(),)
    return PrecisionPlan(source, fmt.precision, False, flags, tf32=tf32)


def _weak_typing_builds(fmt: Format) -> bool:
    # A BuilderFlag of the precision on the FP32 graph: not for FP32, nor a calibrated precision.
    return fmt.precision != SOURCE_PRECISION and not fmt.calibrated


def _check_source(source: Path, precision: str, make: str, fallback: str = "") -> None:
    if not source.is_file():
        raise InputError(
            f"{precision} engines are built from {source}, which is missing: run `{make}` "
            f"first{fallback}"
        )
    try:
        model = onnx.load(str(source), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError, OSError and more for a broken file
        raise ModelFileError(
            f"{source} is not a readable ONNX model ({type(exc).__name__}); re-export it"
        ) from exc
    recorded = {prop.key: prop.value for prop in model.metadata_props}.get(contract.META_PRECISION)
    if recorded != precision:
        raise IncompatibleModelError(
            f"{source} records precision {recorded or 'none'} but {precision} engines are built "
            f"from it; re-export it with `{make.split(', then')[0]}`"
        )
