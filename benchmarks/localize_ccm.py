"""The CCM similarity's share of a low-precision graph's divergence (``dpnet_bench.localize``).

The CCM's matches (the ArgMax over its similarity scores) differ from FP32 for two reasons:
the keys come from a low-precision trunk, and, in an INT8 graph with ``--int8-ccm``, the
similarity itself runs in INT8. :class:`SimilarityProbe` tells them apart on the same
episodes: it recomputes the similarity in FP32 (numpy) on the low-precision graph's own keys
and counts the matches that differ from the FP32 graph's (*before*: the trunk's share alone),
next to the matches the graph itself makes (*after*: the trunk and the similarity). The
difference is what the similarity's precision costs in agreement; for a graph whose CCM is
float it is zero up to summation order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import onnx
from onnx import numpy_helper
from rich.table import Table

from dpnet_export.ccm_int8 import similarity_node

__all__ = ["MatchDivergence", "SimilarityContribution", "SimilarityProbe", "render_similarity"]

_QDQ: Final = ("QuantizeLinear", "DequantizeLinear")
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
        scores_error: relative L2 error of its scores (dequantized) to FP32's, pooled.
        matches: one entry per ArgMax.
    """

    node: str
    op_type: str
    quantized: bool
    scores_error: float
    matches: tuple[MatchDivergence, ...]


class SimilarityProbe:
    """Accumulates :class:`SimilarityContribution` over episodes; build with :meth:`build`."""

    def __init__(
        self,
        node: onnx.NodeProto,
        argmax: Mapping[str, int],
        argmax_nodes: Mapping[str, str],
        scale: float,
        quantized: bool,
    ) -> None:
        self.node = node
        self.argmax = dict(argmax)  # ArgMax output tensor -> axis
        self.argmax_nodes = dict(argmax_nodes)  # ArgMax output tensor -> node name
        self.scale = scale  # score units -> cosine (1 for float scores)
        self.quantized = quantized
        self._differ = {name: np.zeros(2) for name in self.argmax}  # before, after
        self._count = dict.fromkeys(self.argmax, 0)
        self._error = np.zeros(2)

    @classmethod
    def build(cls, fp32: onnx.ModelProto, low: onnx.ModelProto) -> SimilarityProbe | None:
        """The probe of two graphs with a CCM (``None`` when either has none)."""
        ours, theirs = similarity_node(fp32), similarity_node(low)
        if ours is None or theirs is None:
            return None
        axes, names = {}, {}
        for node in low.graph.node:
            if node.op_type == "ArgMax" and node.input[0] == theirs.output[0]:
                axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
                axes[node.output[0]] = -1 if axis in (-1, 3) else -2
                names[node.output[0]] = node.name
        scales = _quantize_scales(low, theirs)
        scale = float(np.prod(scales)) if theirs.op_type == "MatMulInteger" else 1.0
        return cls(theirs, axes, names, scale, quantized=bool(scales))

    def fetches(self, low: onnx.ModelProto) -> tuple[list[str], list[str]]:
        """Tensors to fetch: from the FP32 graph the scores and the ArgMax outputs, from the
        low-precision one its float keys (the inputs of its Q nodes, if any) too."""
        producers = {name: node for node in low.graph.node for name in node.output}
        keys = []
        for name in self.node.input[:2]:
            while name in producers and producers[name].op_type in _QDQ:
                name = producers[name].input[0]
            keys.append(name)
        common = [self.node.output[0], *self.argmax]
        return common, [*keys, *common]

    def add(self, fp32: Sequence[np.ndarray], low: Sequence[np.ndarray]) -> None:
        """One episode: the values of :meth:`fetches` of each graph, in that order."""
        support_keys, query_keys, *rest = low
        theirs_by_name = dict(zip([self.node.output[0], *self.argmax], rest, strict=True))
        ours_by_name = dict(zip([self.node.output[0], *self.argmax], fp32, strict=True))
        self._add(ours_by_name, theirs_by_name, (support_keys, query_keys))

    def _add(
        self,
        fp32: Mapping[str, np.ndarray],
        low: Mapping[str, np.ndarray],
        keys: tuple[np.ndarray, np.ndarray],
    ) -> None:
        scores = fp32[self.node.output[0]].astype(np.float64)
        theirs = low[self.node.output[0]].astype(np.float64) * self.scale
        self._error += [float(np.sum((theirs - scores) ** 2)), float(np.sum(scores**2))]
        recomputed = np.matmul(keys[0], keys[1])
        for name, axis in self.argmax.items():
            reference = fp32[name]
            before = np.argmax(recomputed, axis=axis)
            self._differ[name] += [
                np.count_nonzero(before != reference),
                np.count_nonzero(low[name] != reference),
            ]
            self._count[name] += reference.size

    def result(self) -> SimilarityContribution:
        """The accumulated contribution."""
        error, norm = self._error
        matches = tuple(
            MatchDivergence(
                self.argmax_nodes[name],
                axis,
                *(100.0 * value / max(self._count[name], 1) for value in self._differ[name]),
            )
            for name, axis in self.argmax.items()
        )
        return SimilarityContribution(
            self.node.name,
            self.node.op_type,
            self.quantized,
            float(np.sqrt(error / max(norm, 1e-30))),
            matches,
        )


def render_similarity(contribution: SimilarityContribution) -> Table:
    """The before/after table of the CCM's matches."""
    precision = "INT8" if contribution.quantized else "float"
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
    table.caption = f"scores: relative L2 error {contribution.scores_error:.4f} (dequantized)"
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
