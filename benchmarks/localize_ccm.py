"""The CCM similarity's share of a low-precision graph's divergence (``dpnet_bench.localize``).

The CCM's matches (the ArgMax over its similarity scores) differ from FP32 for two reasons:
the keys come from a low-precision trunk, and, in an INT8 graph with ``--int8-ccm``, the
similarity itself runs in INT8. :class:`SimilarityProbe` tells them apart on the same
episodes: it recomputes the similarity in FP32 (numpy) on the low-precision graph's own keys
and counts the matches that differ from the FP32 graph's (*before*: the trunk's share alone),
next to the matches the graph itself makes (*after*: the trunk and the similarity). The
difference is what the similarity's precision costs in agreement: INT8 keys, or scores that
pass through a lower-precision Cast before the ArgMax read them (the FP16 converter puts an
FP16 round trip there); for a similarity that is FP32 from keys to ArgMax it is zero up to
summation order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import onnx
from onnx import numpy_helper
from rich.table import Table

from dpnet_export.onnx_to_fp16 import CCM_SCOPE, node_scopes

__all__ = ["MatchDivergence", "SimilarityContribution", "SimilarityProbe", "render_similarity"]

_THROUGH: Final = ("QuantizeLinear", "DequantizeLinear", "Cast")
_AXES: Final = {
    -1: "j*: best query match per support position",
    -2: "back: best support match per query position",
}


@dataclass(frozen=True)
class MatchDivergence:
    """One ArgMax of the CCM.

    Attributes:
        node: the ArgMax node; axis: -1 (over the query positions, j*) or -2 (support).
        before_pct: matches that differ from FP32's with an FP32 similarity on this graph's keys.
        after_pct: matches of the graph itself that differ from FP32's.
    """

    node: str
    axis: int
    before_pct: float
    after_pct: float


@dataclass(frozen=True)
class SimilarityContribution:
    """What the low-precision graph's similarity adds to the CCM's divergence.

    Attributes:
        node: the similarity node; op_type: its op in the low-precision graph (``MatMul``,
            ``MatMulInteger``).
        quantized: its inputs are quantized (INT8 similarity).
        rounded_to: the type a Cast round trip rounds its scores to before the ArgMax read
            them (``FLOAT16`` in an FP16 graph whose converter put one there), else ``None``.
        scores_error: relative L2 error of its scores (dequantized) to FP32's, pooled.
        matches: one entry per ArgMax.
    """

    node: str
    op_type: str
    quantized: bool
    rounded_to: str | None
    scores_error: float
    matches: tuple[MatchDivergence, ...]


@dataclass(frozen=True)
class _Scores:
    """Where a graph's CCM reads its scores: the ArgMax nodes, the tensor they read and the
    node that computes the similarity (behind Casts: the FP16 converter rounds through FP16)."""

    argmax: tuple[onnx.NodeProto, ...]
    tensor: str
    similarity: onnx.NodeProto
    rounded_to: str | None


class SimilarityProbe:
    """Accumulates :class:`SimilarityContribution` over episodes; build with :meth:`build`.

    Fetch :meth:`fetches` from both graphs for every episode and hand the values to
    :meth:`add`, then read :meth:`result`.
    """

    def __init__(self, ours: _Scores, theirs: _Scores, keys: list[str], scales: list[float]):
        self._ours, self._theirs, self._keys = ours, theirs, keys
        self.quantized = bool(scales)
        # int32 scores -> cosine; float scores are read as they are.
        integer = theirs.similarity.op_type == "MatMulInteger"
        self._scale = float(np.prod(scales)) if integer else 1.0
        self._differ = np.zeros((len(theirs.argmax), 2))  # before, after
        self._count = np.zeros(len(theirs.argmax))
        self._error = np.zeros(2)

    @classmethod
    def build(cls, fp32: onnx.ModelProto, low: onnx.ModelProto) -> SimilarityProbe | None:
        """The probe of two graphs with a CCM (``None`` when either has none)."""
        ours, theirs = _scores(fp32), _scores(low)
        if ours is None or theirs is None:
            return None
        producers = {name: node for node in low.graph.node for name in node.output}
        keys = []
        for name in theirs.similarity.input[:2]:
            while name in producers and producers[name].op_type in _THROUGH:
                name = producers[name].input[0]
            keys.append(name)
        return cls(ours, theirs, keys, _quantize_scales(low, theirs.similarity))

    def fetches(self) -> tuple[list[str], list[str]]:
        """Tensors to fetch: from the FP32 graph the scores its ArgMax read and their outputs;
        from the low-precision one its float keys too (before any Q, Cast)."""
        ours = [self._ours.tensor, *(node.output[0] for node in self._ours.argmax)]
        theirs = [self._theirs.tensor, *(node.output[0] for node in self._theirs.argmax)]
        return ours, [*self._keys, *theirs]

    def add(self, fp32: Sequence[np.ndarray], low: Sequence[np.ndarray]) -> None:
        """One episode: the values of :meth:`fetches` of each graph, in that order."""
        scores, *references = fp32
        support_keys, query_keys, theirs, *matches = low
        scores = scores.astype(np.float64)
        theirs = theirs.astype(np.float64) * self._scale
        self._error += [float(np.sum((theirs - scores) ** 2)), float(np.sum(scores**2))]
        recomputed = np.matmul(support_keys.astype(np.float32), query_keys.astype(np.float32))
        for index, node in enumerate(self._theirs.argmax):
            before = np.argmax(recomputed, axis=_axis(node))
            self._differ[index] += [
                np.count_nonzero(before != references[index]),
                np.count_nonzero(matches[index] != references[index]),
            ]
            self._count[index] += references[index].size

    def result(self) -> SimilarityContribution:
        """The accumulated contribution."""
        error, norm = self._error
        shares = 100.0 * self._differ / np.maximum(self._count, 1)[:, None]
        matches = tuple(
            MatchDivergence(node.name, _axis(node), float(before), float(after))
            for node, (before, after) in zip(self._theirs.argmax, shares, strict=True)
        )
        similarity = self._theirs.similarity
        return SimilarityContribution(
            similarity.name,
            similarity.op_type,
            self.quantized,
            self._theirs.rounded_to,
            float(np.sqrt(error / max(norm, 1e-30))),
            matches,
        )


def _scores(model: onnx.ModelProto) -> _Scores | None:
    argmax = tuple(
        node
        for node in model.graph.node
        if node.op_type == "ArgMax" and CCM_SCOPE in node_scopes(node)
    )
    if not argmax or len({node.input[0] for node in argmax}) != 1:
        return None
    producers = {name: node for node in model.graph.node for name in node.output}
    producer = producers.get(argmax[0].input[0])
    rounded_to = None
    while producer is not None and producer.op_type == "Cast":
        to = next(a.i for a in producer.attribute if a.name == "to")
        if to != onnx.TensorProto.FLOAT:
            rounded_to = onnx.TensorProto.DataType.Name(to)
        producer = producers.get(producer.input[0])
    if producer is None or producer.op_type not in ("MatMul", "MatMulInteger"):
        return None
    # The same order in both graphs: by axis, j* (over the query positions) first.
    ordered = tuple(sorted(argmax, key=lambda node: -_axis(node)))
    return _Scores(ordered, argmax[0].input[0], producer, rounded_to)


def _axis(node: onnx.NodeProto) -> int:
    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
    return -1 if axis in (-1, 3) else -2


def render_similarity(contribution: SimilarityContribution) -> Table:
    """The before/after table of the CCM's matches."""
    precision = "INT8" if contribution.quantized else "float"
    if contribution.rounded_to is not None:
        precision += f", scores rounded to {contribution.rounded_to}"
    table = Table(
        title=f"CCM similarity {contribution.node} ({contribution.op_type}, {precision}): "
        "matches that differ from FP32"
    )
    for column in (
        "ArgMax",
        "before: FP32 similarity on these keys",
        "after: this graph",
        "the similarity's share",
    ):
        table.add_column(column, overflow="fold")
    for match in contribution.matches:
        table.add_row(
            f"{match.node}: {_AXES[match.axis]}",
            f"{match.before_pct:.2f} %",
            f"{match.after_pct:.2f} %",
            f"{match.after_pct - match.before_pct:+.2f} pt",
        )
    table.caption = (
        f"scores as the ArgMax read them: relative L2 error {contribution.scores_error:.4f} "
        "(INT8 ones dequantized)"
    )
    return table


def _quantize_scales(model: onnx.ModelProto, node: onnx.NodeProto) -> list[float]:
    # The scales of the QuantizeLinear nodes feeding the similarity (through a DequantizeLinear
    # for the QDQ form); empty for a float similarity.
    producers = {name: item for item in model.graph.node for name in item.output}
    values = {tensor.name: tensor for tensor in model.graph.initializer}
    scales = []
    for name in node.input[:2]:
        producer = producers.get(name)
        if producer is not None and producer.op_type == "DequantizeLinear":
            producer = producers.get(producer.input[0])
        if producer is not None and producer.op_type == "QuantizeLinear":
            scales.append(float(numpy_helper.to_array(values[producer.input[1]])))
    return scales
