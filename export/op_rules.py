"""The op rules of every dpnet graph: one policy for the exporter and the TensorRT lint.

:func:`dpnet_export.torch_to_onnx.check_graph` refuses to write a graph that breaks them and
:func:`dpnet_export.lint.lint_onnx` (``dpnet-export check``) reports them as errors, both from
the two tables below:

- :data:`FORBIDDEN_OPS`: ops that must not appear anywhere in a graph, with the reason: control
  flow, ops whose output shape depends on the data, TopK and the Scatter family (the CCM is
  static tensor algebra: ArgMax and a one-hot MatMul replace them).
- :data:`CCM_ALLOWED_OPS`: the only ops allowed under the name scope ``ccm`` (the
  :class:`dpnet.model.ccm.CycleComparison` module). It is exactly what the exported CCM
  contains: the similarity and one-hot MatMuls, both ArgMax, the cycle's GatherElements, the
  ``[:, :, 0]`` pick (Gather), the one-hot Equal, the ``> 0.5`` Greater, the fg-and-fg And, the
  Casts and Unsqueezes, and MatMulInteger: the similarity of the ONNX Runtime INT8 graph
  (:mod:`dpnet_export.ccm_int8`). A new op in the CCM fails the export until it is added here
  (and to docs/export/index.md's list).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

__all__ = ["CCM_ALLOWED_OPS", "FORBIDDEN_OPS"]

_CONTROL_FLOW: Final = "control flow"
_DATA_DEPENDENT: Final = "its output shape depends on the data"
_SCATTER: Final = "forbidden in dpnet graphs (use a one-hot MatMul)"

FORBIDDEN_OPS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "Loop": _CONTROL_FLOW,
        "If": _CONTROL_FLOW,
        "Scan": _CONTROL_FLOW,
        "NonZero": _DATA_DEPENDENT,
        "Compress": _DATA_DEPENDENT,
        "Unique": _DATA_DEPENDENT,
        "NonMaxSuppression": _DATA_DEPENDENT,
        "TopK": "forbidden in dpnet graphs (use ArgMax; K must be static)",
        "Scatter": _SCATTER,
        "ScatterND": _SCATTER,
        "ScatterElements": _SCATTER,
    }
)
CCM_ALLOWED_OPS: Final = frozenset(
    {
        "MatMul",
        "MatMulInteger",
        "ArgMax",
        "GatherElements",
        "Gather",
        "Equal",
        "Greater",
        "And",
        "Cast",
        "Unsqueeze",
    }
)
