"""The artifact contract as data: graph roles, their files and typed I/O, and the format table.

This module is the single source of truth shared by the exporter (which writes graphs that
follow it), the runtime (which feeds them), the bench, the TensorRT builder and a C++ caller
(docs/runtime.md, "I/O contract"). Two tables hold every fact; everything else derives from them:

- :data:`GRAPHS`: graph role (``episode``, ``support``, ``query``) -> :class:`GraphSpec`, the
  file name and the inputs and outputs as :class:`TensorSpec` on symbolic axes.
- :data:`FORMATS`: one :class:`Format` row per (backend, precision), in the spirit of
  Ultralytics' ``export_formats()``: device, artifact kind, pip extra, help text, parity
  limits, converter and, for an engine, the ONNX graphs it is built from. Names, file names,
  commands and every derived list are in :mod:`dpnet_runtime.formats`.

Symbolic axes: ``B`` episodes and ``K`` shots are dynamic in every graph (the exported graphs
name them so: ONNX Runtime and TensorRT report the same names); ``S`` is the image side, ``h``
the feature side (``h = (S - 1) // 8 + 1``), ``C`` the feature channels and ``D`` the cosine
channels (:data:`COS_CHANNELS`), fixed per export and bound by :meth:`GraphSpec.bind`.
``--raw-input`` graphs take uint8 RGB images channels last and uint8 masks
(:data:`RAW_INPUTS`) and normalise inside the graph.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Final

__all__ = [
    "BATCH_AXIS",
    "CONFIDENCE",
    "COS_CHANNELS",
    "EPISODE",
    "FORMATS",
    "GRAPHS",
    "IGNORE_LABEL",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LOGITS",
    "MASK",
    "META_BETA",
    "META_CALIBRATION",
    "META_CHECKPOINT_SHA256",
    "META_CONFIG",
    "META_DPNET_VERSION",
    "META_GRAPH",
    "META_INPUTS",
    "META_INPUT_SIZE",
    "META_INT8_TARGET",
    "META_MAX_SHOTS",
    "META_MEAN",
    "META_OPSET",
    "META_OUTPUTS",
    "META_PRECISION",
    "META_RAW_INPUT",
    "META_STD",
    "PROTOTYPES",
    "PSEUDO_COUNT",
    "QUERY",
    "QUERY_IMAGE",
    "RAW_INPUTS",
    "SHOTS_AXIS",
    "SOURCE_PRECISION",
    "SUPPORT",
    "SUPPORT_COS_FEATS",
    "SUPPORT_FG",
    "SUPPORT_IMAGES",
    "SUPPORT_MASKS",
    "Format",
    "GraphSpec",
    "ParityLimits",
    "TensorSpec",
    "feature_size",
    "find_format",
    "symbolic_axis",
]


@dataclass(frozen=True)
class TensorSpec:
    """Name, dtype and shape of one graph input or output.

    Attributes:
        name: tensor name as in the graph (``support_images``).
        dtype: numpy dtype name (``"float32"``, ``"uint8"``, ``"int32"``).
        shape: one entry per axis: an int for a static axis, a string naming a symbolic one
            (``"B"``, ``"K"``, ``"S"``); axes sharing a name must agree across the inputs of one
            call.
        min_shape: smallest accepted shape (a TensorRT optimisation profile), or ``None``.
        max_shape: largest accepted shape, or ``None``.
    """

    name: str
    dtype: str
    shape: tuple[int | str, ...]
    min_shape: tuple[int, ...] | None = None
    max_shape: tuple[int, ...] | None = None

    def describe(self) -> str:
        """Human-readable ``float32 [B, K, 3, 321, 321]`` for messages."""
        return f"{self.dtype} [{', '.join(str(dim) for dim in self.shape)}]"


# Graph roles.
EPISODE: Final = "episode"
SUPPORT: Final = "support"
QUERY: Final = "query"

# Tensor names (the keys of every feed and result).
SUPPORT_IMAGES: Final = "support_images"
SUPPORT_MASKS: Final = "support_masks"
QUERY_IMAGE: Final = "query_image"
SUPPORT_COS_FEATS: Final = "support_cos_feats"
SUPPORT_FG: Final = "support_fg"
PROTOTYPES: Final = "prototypes"
LOGITS: Final = "logits"
MASK: Final = "mask"
PSEUDO_COUNT: Final = "pseudo_count"
CONFIDENCE: Final = "confidence"

# Symbolic axes: dynamic in every graph, and bound per export by GraphSpec.bind.
BATCH_AXIS: Final = "B"
SHOTS_AXIS: Final = "K"
_SIDE: Final = "S"
_FEATURE_SIDE: Final = "h"
_CHANNELS: Final = "C"
_COS: Final = "D"
COS_CHANNELS: Final = 1024  # layer3 of ResNet-50: the CCM's cosine features


@dataclass(frozen=True)
class GraphSpec:
    """One graph role of the contract: its file and its typed inputs and outputs.

    Attributes:
        role: ``episode``, ``support`` or ``query``.
        file: the FP32 ONNX file name in an export directory (``dpnet.onnx``).
        inputs: input specs on symbolic axes (normalised float layout), in graph order.
        outputs: output specs on symbolic axes, in graph order.
    """

    role: str
    file: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def input_names(self) -> tuple[str, ...]:
        """Input names in graph order."""
        return tuple(spec.name for spec in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        """Output names in graph order."""
        return tuple(spec.name for spec in self.outputs)

    @property
    def stem(self) -> str:
        """The file name without ``.onnx`` (``dpnet_support``)."""
        return self.file.removesuffix(".onnx")

    def bind(
        self, *, size: int, channels: int, raw_input: bool = False
    ) -> tuple[dict[str, TensorSpec], dict[str, TensorSpec]]:
        """Input and output specs of one export: S, h, C and D bound, B and K left symbolic.

        Args:
            size: the image side S of the export.
            channels: the config's feature channels C.
            raw_input: the graphs take uint8 images (``--raw-input``, :data:`RAW_INPUTS`).

        Returns:
            ``(inputs, outputs)``, each name -> spec in graph order.

        >>> GRAPHS[SUPPORT].bind(size=129, channels=64)[1]["prototypes"].shape
        ('B', 'K', 64)
        """
        values: dict[str, int] = {
            _SIDE: size,
            _FEATURE_SIDE: feature_size(size),
            _CHANNELS: channels,
            _COS: COS_CHANNELS,
        }

        def bound(spec: TensorSpec) -> TensorSpec:
            if raw_input and spec.name in RAW_INPUTS:
                spec = RAW_INPUTS[spec.name]
            shape = tuple(
                values.get(dim, dim) if isinstance(dim, str) else dim for dim in spec.shape
            )
            return replace(spec, shape=shape)

        return (
            {spec.name: bound(spec) for spec in self.inputs},
            {spec.name: bound(spec) for spec in self.outputs},
        )


def _spec(name: str, dtype: str, *shape: int | str) -> TensorSpec:
    return TensorSpec(name, dtype, shape)


_SUPPORT_INPUTS: Final = (
    _spec(SUPPORT_IMAGES, "float32", "B", "K", 3, "S", "S"),
    _spec(SUPPORT_MASKS, "float32", "B", "K", "S", "S"),
)
_QUERY_INPUT: Final = _spec(QUERY_IMAGE, "float32", "B", 3, "S", "S")
_SUPPORT_CACHE: Final = (
    _spec(SUPPORT_COS_FEATS, "float32", "B", "K", "D", "h", "h"),
    _spec(SUPPORT_FG, "float32", "B", "K", "h", "h"),
    _spec(PROTOTYPES, "float32", "B", "K", "C"),
)
_HEAD_OUTPUTS: Final = (
    _spec(LOGITS, "float32", "B", 2, "S", "S"),
    _spec(MASK, "uint8", "B", "S", "S"),
    _spec(PSEUDO_COUNT, "int32", "B"),
    _spec(CONFIDENCE, "uint8", "B", "K", "h", "h"),
)

GRAPHS: Final[dict[str, GraphSpec]] = {
    EPISODE: GraphSpec(EPISODE, "dpnet.onnx", (*_SUPPORT_INPUTS, _QUERY_INPUT), _HEAD_OUTPUTS),
    SUPPORT: GraphSpec(SUPPORT, "dpnet_support.onnx", _SUPPORT_INPUTS, _SUPPORT_CACHE),
    QUERY: GraphSpec(QUERY, "dpnet_query.onnx", (_QUERY_INPUT, *_SUPPORT_CACHE), _HEAD_OUTPUTS),
}
"""Graph role -> :class:`GraphSpec`. The support cache (the support graph's outputs) is passed
to the query graph unchanged; the query graph has the episode graph's outputs."""

RAW_INPUTS: Final[dict[str, TensorSpec]] = {
    spec.name: spec
    for spec in (
        _spec(SUPPORT_IMAGES, "uint8", "B", "K", "S", "S", 3),
        _spec(SUPPORT_MASKS, "uint8", "B", "K", "S", "S"),
        _spec(QUERY_IMAGE, "uint8", "B", "S", "S", 3),
    )
}
"""The image and mask inputs of a ``--raw-input`` export: RGB bytes channels last, 0/1 masks."""


def symbolic_axis(name: str, axis: int) -> str | None:
    """The symbolic name of axis ``axis`` of contract tensor ``name`` (``"B"``, ``"K"``...).

    Returns ``None`` for static axes and unknown tensors.

    >>> symbolic_axis("support_fg", 1)
    'K'
    """
    for graph in GRAPHS.values():
        for spec in (*graph.inputs, *graph.outputs):
            if spec.name == name and axis < len(spec.shape):
                dim = spec.shape[axis]
                return dim if isinstance(dim, str) else None
    return None


SOURCE_PRECISION: Final = "fp32"
"""The precision of the exported graphs that every other precision is converted from."""


@dataclass(frozen=True)
class ParityLimits:
    """How close a format must stay to PyTorch FP32 on the bench's episodes (docs/design.md,
    Targets).

    Attributes:
        max_miou_delta_pt: gate: the largest |mIoU delta| to torch, either protocol, points.
        min_pixel_agreement_pct: gate: the smallest share of mask pixels equal to torch's
            (``None``: no such gate).
        min_confidence_iou_pct: a reported target, not a gate: the smallest pooled IoU of the
            CCM's confident sets C' with torch's (``None``: none).
    """

    max_miou_delta_pt: float
    min_pixel_agreement_pct: float | None = None
    min_confidence_iou_pct: float | None = None


@dataclass(frozen=True)
class Format:
    """One deployable format: a row of the format table, one per (backend, precision).

    Attributes:
        backend: the runner family: ``torch``, ``ort`` or ``trt``.
        precision: ``fp32``, ``fp16``, ``int8``...: its spelling in the CLI, JSON, metadata and
            engine sidecars. The rows of one backend run from the most faithful to the least:
            ``Predictor.open`` without a precision takes the first one present.
        device: ``cpu`` or ``cuda``, where it runs.
        artifact: ``checkpoint`` (PyTorch), ``onnx`` (graphs) or ``engine`` (TensorRT).
        extra: the pip extra that provides its packages (``None``: the base install).
        summary: what the format is, for ``--help`` and the docs' format table.
        limits: its parity limits against PyTorch FP32 (the bench's gates); every row of one
            precision has the same (:func:`dpnet_runtime.formats.parity_limits`).
        source_tag: for an engine, the tag of the ONNX graphs it is built from: ``"_fp16"``,
            the mixed-precision graphs that FP16 engines are built from strongly typed, and
            ``"_int8_trt"``, the TensorRT-flavoured INT8 QDQ graphs written beside the
            ``ort-int8`` ones.
        converter: ``"module:function"`` that makes this row's ONNX graphs (its own, or an
            engine's source) from the FP32 ones (``dpnet_export.low_precision``); empty for
            the FP32 rows, which the export writes itself.
        calibrated: the converter needs calibration episodes (``--calib-*``).
    """

    backend: str
    precision: str
    device: str
    artifact: str
    extra: str | None
    summary: str
    limits: ParityLimits
    source_tag: str = ""
    converter: str = ""
    calibrated: bool = False

    @property
    def name(self) -> str:
        """The string of the CLI, JSON and bench rows: the backend for FP32, else
        ``backend-precision``.

        >>> FORMATS["trt-fp16"].name, FORMATS["trt"].precision
        ('trt-fp16', 'fp32')
        """
        if self.precision == SOURCE_PRECISION:
            return self.backend
        return f"{self.backend}-{self.precision}"

    @property
    def tag(self) -> str:
        """What follows the graph's stem in its file names: ``""`` for FP32, else
        ``_precision`` (``dpnet_fp16.onnx``, ``dpnet_int8.engine``)."""
        return "" if self.precision == SOURCE_PRECISION else f"_{self.precision}"

    @property
    def roles(self) -> tuple[str, ...]:
        """The graph roles stored as files: all for ONNX, the episode for an engine."""
        if self.artifact == "onnx":
            return tuple(GRAPHS)
        if self.artifact == "engine":
            return (EPISODE,)
        return ()

    @property
    def make(self) -> str:
        """The command that writes the artifact, for messages and the docs.

        >>> FORMATS["trt-int8"].make
        'dpnet-export onnx --ckpt CHECKPOINT --out DIR --precision int8, then dpnet-export trt --model DIR --precision int8'
        """  # noqa: E501
        if self.artifact == "checkpoint":
            return "dpnet-train"
        onnx = "dpnet-export onnx --ckpt CHECKPOINT --out DIR"
        built_from_fp32 = self.artifact == "engine" and not self.source_tag
        if self.precision != SOURCE_PRECISION and not built_from_fp32:
            onnx += f" --precision {self.precision}"
        if self.artifact == "onnx":
            return onnx
        return f"{onnx}, then dpnet-export trt --model DIR --precision {self.precision}"

    def file_name(self, role: str) -> str:
        """The file of graph ``role`` in an export directory.

        >>> FORMATS["ort-fp16"].file_name("support")
        'dpnet_support_fp16.onnx'
        """
        if role not in self.roles:
            raise ValueError(f"format {self.name} has no {role} file")
        return f"{GRAPHS[role].stem}{self.tag}.{self.artifact}"

    def onnx_name(self, role: str) -> str:
        """The ONNX file of graph ``role`` that this format reads: its own file for ``onnx``,
        the file it is built from for an engine (``source_tag``).

        >>> FORMATS["trt-int8"].onnx_name("episode")
        'dpnet_int8_trt.onnx'

        Raises:
            ValueError: a checkpoint format (no ONNX graph).
        """
        if self.artifact == "onnx":
            return self.file_name(role)
        if self.artifact == "engine":
            return f"{GRAPHS[role].stem}{self.source_tag}.onnx"
        raise ValueError(f"format {self.name} reads no ONNX graph")


# docs/design.md#targets: one set of limits per precision, shared by every backend's row.
_FP32_LIMITS: Final = ParityLimits(max_miou_delta_pt=0.05, min_pixel_agreement_pct=99.9)
_FP16_LIMITS: Final = ParityLimits(max_miou_delta_pt=0.3, min_confidence_iou_pct=98.0)
_INT8_LIMITS: Final = ParityLimits(max_miou_delta_pt=1.0, min_pixel_agreement_pct=97.0)
_FP16_GRAPHS: Final = "dpnet_export.low_precision:fp16_graphs"
_INT8_GRAPHS: Final = "dpnet_export.low_precision:int8_graphs"
_MIXED: Final = (
    "FP16 weights and activations; the CCM, L2 norms, discriminator, z-score and "
    "softmax/ArgMax stay FP32"
)

FORMATS: Final[dict[str, Format]] = {
    row.name: row
    for row in (
        Format("torch", "fp32", "cpu", "checkpoint", "train",
               "PyTorch eager on the checkpoint: the parity reference", _FP32_LIMITS),
        Format("torch", "fp16", "cuda", "checkpoint", "train",
               "PyTorch half precision on CUDA", _FP16_LIMITS),
        Format("ort", "fp32", "cpu", "onnx", None,
               "the FP32 graphs, always written: the source of every other format",
               _FP32_LIMITS),
        Format("ort", "fp16", "cpu", "onnx", None,
               f"mixed-precision *_fp16.onnx copies: {_MIXED}; FP32 I/O", _FP16_LIMITS,
               converter=_FP16_GRAPHS),
        Format("ort", "int8", "cpu", "onnx", None,
               "calibrated INT8 QDQ copies for ONNX Runtime on CPU, *_int8.onnx (U8S8), the "
               "CCM similarity too (--no-int8-ccm keeps it float); the CCM's ArgMax and "
               "gathers, L2 norms, discriminator, PIM, classifier and mask ArgMax stay float",
               _INT8_LIMITS, converter=_INT8_GRAPHS, calibrated=True),
        Format("trt", "fp32", "cuda", "engine", "trt",
               "FP32 TensorRT engine of dpnet.onnx (TF32 off)", _FP32_LIMITS),
        Format("trt", "fp16", "cuda", "engine", "trt",
               "FP16 TensorRT engine, strongly typed from dpnet_fp16.onnx", _FP16_LIMITS,
               source_tag="_fp16", converter=_FP16_GRAPHS),
        Format("trt", "int8", "cuda", "engine", "trt",
               "INT8 TensorRT engine (explicit quantization) of the symmetric S8S8 QDQ "
               "graphs *_int8_trt.onnx", _INT8_LIMITS,
               source_tag="_int8_trt", converter=_INT8_GRAPHS, calibrated=True),
    )
}  # fmt: skip
"""Format name -> :class:`Format`, in report order. A new precision is one row per backend
that runs it plus its converter; every list of precisions, choice, help text, gate and file
name derives from these rows (:mod:`dpnet_runtime.formats`)."""


def find_format(backend: str, precision: str | None = None) -> Format:
    """The format row of ``backend`` at ``precision`` (``None``: the backend's first row).

    Raises:
        ValueError: no such row; the message lists the backend's formats (callers turn it
            into their own error type).

    >>> find_format("ort", "fp16").name
    'ort-fp16'
    """
    rows = [row for row in FORMATS.values() if row.backend == backend]
    if not rows:
        backends = sorted({row.backend for row in FORMATS.values()})
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(backends)}")
    for row in rows:
        if precision is None or row.precision == precision:
            return row
    choices = ", ".join(f"{row.precision} ({row.name})" for row in rows)
    raise ValueError(f"backend {backend!r} has no {precision!r} format; choose one of {choices}")


# ONNX metadata_props keys.
META_DPNET_VERSION: Final = "dpnet_version"
META_CONFIG: Final = "model_config"
META_CHECKPOINT_SHA256: Final = "checkpoint_sha256"
META_INPUT_SIZE: Final = "input_size"
META_MEAN: Final = "mean"
META_STD: Final = "std"
META_BETA: Final = "beta"
META_OPSET: Final = "opset"
META_INPUTS: Final = "inputs"
META_OUTPUTS: Final = "outputs"
META_RAW_INPUT: Final = "raw_input"
META_PRECISION: Final = "precision"
META_GRAPH: Final = "graph"  # a key of GRAPHS
META_MAX_SHOTS: Final = "max_shots"
META_INT8_TARGET: Final = "int8_target"  # INT8 graphs: the backend their QDQ flavour is for
META_CALIBRATION: Final = "calibration"  # INT8 graphs: JSON of the calibration data and method

# Pre-processing constants (torchvision's ImageNet statistics, RGB order, on 0..1 pixels).
IMAGENET_MEAN: Final = (0.485, 0.456, 0.406)
IMAGENET_STD: Final = (0.229, 0.224, 0.225)
IGNORE_LABEL: Final = 255


def feature_size(input_size: int) -> int:
    """Feature side h for an input side S at output stride 8 (conv1, maxpool, layer2 strides).

    >>> feature_size(321)
    41
    """
    side = input_size
    for _ in range(3):
        side = (side - 1) // 2 + 1
    return side
