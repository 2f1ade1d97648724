"""Few-shot segmentation metrics: class-wise IoU over episodes, two mIoU protocols, FB-IoU.

All values are in **percent** (0..100), as papers report them.

* Per class c: the intersections and unions of every episode of class c are summed, and
  IoU_c = 100 * sum(I) / sum(U) (not a mean of per-episode IoUs).
* ``canet`` protocol (CANet, DPNet(CANet)): ignore pixels (255) count as background, so a
  prediction on an object's border band is a false positive.
* ``pfenet`` protocol (PFENet, HSNet): ignore pixels are left out of I and U.
* mIoU = mean of IoU_c over the split's classes that had at least one episode; classes never
  seen are left out of the mean and of ``per_class`` (NaN when no episode was seen at all).
  A class whose summed union is 0 (nothing to find, nothing predicted) has IoU 100.
* FB-IoU (HSNet): foreground and background IoU, each summed over all episodes of all
  classes with ignore pixels left out, then averaged.

The accumulator takes numpy arrays only (callers convert tensors) and needs no torch.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from dpnet_runtime.contract import IGNORE_LABEL
from dpnet_runtime.errors import InputError

__all__ = ["IoUAccumulator"]


def _iou(intersection: int, union: int) -> float:
    return 100.0 if union == 0 else 100.0 * intersection / union


class IoUAccumulator:
    """Sums intersections and unions per class over episodes; see the module docstring.

    >>> acc = IoUAccumulator([1, 2])
    >>> acc.update(np.array([[1, 0]]), np.array([[1, 255]]), class_id=1)
    >>> acc.result()["miou_canet"], acc.result()["miou_pfenet"]
    (100.0, 100.0)
    """

    def __init__(self, class_ids: Iterable[int]) -> None:
        """Args: class_ids: the classes whose episodes will be measured (a fold's classes)."""
        self.class_ids = tuple(int(c) for c in class_ids)
        if not self.class_ids:
            raise InputError("IoUAccumulator needs at least one class id")
        # Per class: [canet I, canet U, pfenet I, pfenet U, episodes].
        self._per_class = {c: np.zeros(5, dtype=np.int64) for c in self.class_ids}
        # Over all episodes, ignore excluded: [bg I, bg U, fg I, fg U].
        self._fb = np.zeros(4, dtype=np.int64)
        self.episodes = 0

    def update(self, pred: np.ndarray, label: np.ndarray, class_id: int) -> None:
        """Add one episode.

        Args:
            pred: [H, W] predicted mask, bool or integers in {0, 1}.
            label: [H, W] query label, integers in {0, 1, 255}, at the same size as ``pred``
                (evaluate at the label's original size).
            class_id: the episode class, one of ``class_ids``.

        Raises:
            InputError: shapes differ or are not 2-D, values outside the sets above, or an
                unknown class.
        """
        if class_id not in self._per_class:
            raise InputError(
                f"class {class_id} is not one of the measured classes {self.class_ids}"
            )
        if pred.ndim != 2 or pred.shape != label.shape:
            raise InputError(
                f"pred {list(pred.shape)} and label {list(label.shape)} must be the same [H, W]"
            )
        if not np.isin(pred, (0, 1)).all():
            raise InputError("pred must hold only 0 and 1 (take the argmax of the logits)")
        if not np.isin(label, (0, 1, IGNORE_LABEL)).all():
            raise InputError(f"label must hold only 0, 1 and {IGNORE_LABEL} (ignore)")
        predicted = pred.astype(bool)
        valid = label != IGNORE_LABEL
        target = label == 1
        pfenet_i = int(np.count_nonzero(predicted & target))  # target pixels are never ignore
        canet_u = int(np.count_nonzero(predicted | target))
        pfenet_u = int(np.count_nonzero((predicted | target) & valid))
        background_i = int(np.count_nonzero(~predicted & ~target & valid))
        background_u = int(np.count_nonzero((~predicted | ~target) & valid))
        self._per_class[class_id] += (pfenet_i, canet_u, pfenet_i, pfenet_u, 1)
        self._fb += (background_i, background_u, pfenet_i, pfenet_u)
        self.episodes += 1

    def result(self) -> dict[str, Any]:
        """The metrics so far, in percent.

        Returns:
            ``{"miou_canet": float, "miou_pfenet": float, "fbiou": float, "episodes": int,
            "per_class": {class_id: {"iou_canet": float, "iou_pfenet": float,
            "episodes": int}}}``; mIoU and FB-IoU are NaN before the first episode.
        """
        per_class = {
            class_id: {
                "iou_canet": _iou(int(sums[0]), int(sums[1])),
                "iou_pfenet": _iou(int(sums[2]), int(sums[3])),
                "episodes": int(sums[4]),
            }
            for class_id, sums in self._per_class.items()
            if sums[4] > 0
        }
        background_i, background_u, foreground_i, foreground_u = self._fb.tolist()
        return {
            "miou_canet": _mean([v["iou_canet"] for v in per_class.values()]),
            "miou_pfenet": _mean([v["iou_pfenet"] for v in per_class.values()]),
            "fbiou": _mean(
                [_iou(background_i, background_u), _iou(foreground_i, foreground_u)]
                if self.episodes
                else []
            ),
            "episodes": self.episodes,
            "per_class": per_class,
        }


def _mean(values: list[float]) -> float:
    """Mean of ``values``, NaN for none."""
    return float(sum(values) / len(values)) if values else float("nan")
