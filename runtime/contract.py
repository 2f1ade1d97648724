"""The artifact contract as data: graph roles, their files and typed I/O, and the format table.

This module is the single source of truth shared by the exporter (which writes graphs that
follow it), the runtime (which feeds them), the bench, the TensorRT builder and a C++ caller
(docs/runtime.md, "I/O contract"). Two tables hold every fact; everything else derives from them:

- :data:`GRAPHS`: graph role (``episode``, ``support``, ``query``) -> :class:`GraphSpec`, the
  file name and the inputs and outputs as :class:`TensorSpec` on symbolic axes.
- :data:`FORMATS`: one :class:`Format` row per deployable format (``torch``, ``ort-fp16``,
  ``ort-int8``, ``trt``...), in the spirit of Ultralytics' ``export_formats()``: backend,
  precision, device, artifact kind and file tag, the pip extra it needs, the command that
  makes it and, for an engine, the tag of the ONNX graphs it is built from.

Symbolic axes: ``B`` episodes and ``K`` shots are dynamic in every graph; ``S`` is the model's
image side, ``h`` the feature side (output stride 8: ``h = (S - 1) // 8 + 1``), ``C`` the
feature channels of the config and ``D`` the cosine channels (:data:`COS_CHANNELS`); these
four are fixed per export and bound by :meth:`GraphSpec.bind`.

Whole-episode graph ``dpnet.onnx``: ``support_images [B,K,3,S,S]``, ``support_masks [B,K,S,S]``
(1 = object, 0 = background), ``query_image [B,3,S,S]`` (float32, ImageNet-normalised RGB) ->
``logits [B,2,S,S] float32`` (background, object), ``mask [B,S,S] uint8`` (argmax of logits),
``pseudo_count [B] int32`` (size of the confident set C' summed over shots) and
``confidence [B,K,h,w] uint8`` (C' per shot). The split pair: ``dpnet_support.onnx`` maps the
support inputs to the support cache (``support_cos_feats [B,K,D,h,w]`` L2-normalised,
``support_fg [B,K,h,w]``, ``prototypes [B,K,C]``); ``dpnet_query.onnx`` maps ``query_image``
plus the cache to the episode graph's outputs. With ``--raw-input`` the images are
``uint8 [B,K,S,S,3]`` / ``[B,S,S,3]`` RGB and the masks ``uint8 [B,K,S,S]``
(:data:`RAW_INPUTS`); normalisation happens inside the graph.
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
    "PRECISIONS",
    "PROTOTYPES",
    "PSEUDO_COUNT",
    "QUERY",
    "QUERY_IMAGE",
    "RAW_INPUTS",
    "SHOTS_AXIS",
    "SUPPORT",
    "SUPPORT_COS_FEATS",
    "SUPPORT_FG",
    "SUPPORT_IMAGES",
    "SUPPORT_MASKS",
    "Format",
    "GraphSpec",
    "TensorSpec",
    "feature_size",
    "find_format",
    "shots_axis_inputs",
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

    @property
    def is_static(self) -> bool:
        """True when every axis has a fixed size."""
        return all(isinstance(dim, int) for dim in self.shape)

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


def shots_axis_inputs() -> frozenset[str]:
    """Names of the graph inputs that carry the shots axis K (TensorRT profiles bound it)."""
    return frozenset(
        spec.name for graph in GRAPHS.values() for spec in graph.inputs if SHOTS_AXIS in spec.shape
    )


PRECISIONS: Final = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class Format:
    """One deployable format: a row of the format table.

    Attributes:
        name: the string of the CLI, JSON and bench rows (``ort-fp16``).
        backend: the runner family: ``torch``, ``ort`` or ``trt``.
        precision: one of :data:`PRECISIONS`.
        device: ``cpu`` or ``cuda``, where it runs.
        artifact: ``checkpoint`` (PyTorch), ``onnx`` (graphs) or ``engine`` (TensorRT).
        tag: what follows the graph's stem in its file names (``""``, ``"_fp16"``).
        extra: the pip extra that provides its packages (``None``: the base install).
        make: the command that writes the artifact, for messages.
        source_tag: for an engine, the tag of the ONNX graphs it is built from: ``"_fp16"``,
            the mixed-precision graphs that FP16 engines are built from strongly typed, and
            ``"_int8_trt"``, the TensorRT-flavoured INT8 QDQ graphs that
            ``dpnet-export onnx --int8`` writes beside the ``ort-int8`` ones.
    """

    name: str
    backend: str
    precision: str
    device: str
    artifact: str
    tag: str
    extra: str | None
    make: str
    source_tag: str = ""

    @property
    def roles(self) -> tuple[str, ...]:
        """The graph roles stored as files: all for ONNX, the episode for an engine."""
        if self.artifact == "onnx":
            return tuple(GRAPHS)
        if self.artifact == "engine":
            return (EPISODE,)
        return ()

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


_EXPORT: Final = "dpnet-export onnx --ckpt CHECKPOINT --out DIR"
_TRT: Final = "dpnet-export trt --onnx DIR/dpnet.onnx"

FORMATS: Final[dict[str, Format]] = {
    row.name: row
    for row in (
        Format("torch", "torch", "fp32", "cpu", "checkpoint", "", "train", "dpnet-train"),
        Format("torch-fp16", "torch", "fp16", "cuda", "checkpoint", "", "train", "dpnet-train"),
        Format("ort", "ort", "fp32", "cpu", "onnx", "", None, _EXPORT),
        Format("ort-fp16", "ort", "fp16", "cpu", "onnx", "_fp16", None, f"{_EXPORT} --fp16"),
        Format("ort-int8", "ort", "int8", "cpu", "onnx", "_int8", None, f"{_EXPORT} --int8"),
        Format(
            "trt", "trt", "fp16", "cuda", "engine", "", "trt",
            f"{_EXPORT} --fp16, then {_TRT} --fp16", source_tag="_fp16",
        ),
        Format(
            "trt-int8", "trt", "int8", "cuda", "engine", "_int8", "trt",
            f"{_EXPORT} --int8, then {_TRT} --int8", source_tag="_int8_trt",
        ),
    )
}  # fmt: skip
"""Format name -> :class:`Format`, in report order. A new precision is one new row."""


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
