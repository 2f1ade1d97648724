"""Accuracy of one subject and its parity with PyTorch FP32 on the same episodes.

* :func:`score_masks`: mIoU under both protocols and FB-IoU (:class:`dpnet.metrics.IoUAccumulator`).
* :func:`compare_to_reference`: mIoU deltas, mask pixel agreement and agreement of the CCM
  confidence sets C' (pooled IoU: intersections and unions summed over every episode and shot,
  so large sets weigh more, like the mIoU).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dpnet.metrics import IoUAccumulator
from dpnet_runtime.contract import ParityLimits

__all__ = [
    "AccuracyResult",
    "ParityResult",
    "compare_to_reference",
    "mask_agreement",
    "score_masks",
    "set_iou",
]


@dataclass(frozen=True)
class AccuracyResult:
    """Segmentation quality of one subject, in percent."""

    miou_canet: float
    miou_pfenet: float
    fbiou: float


@dataclass(frozen=True)
class ParityResult:
    """One subject against PyTorch FP32 on the same episodes.

    Attributes:
        miou_delta_canet_pt / miou_delta_pfenet_pt / fbiou_delta_pt: subject minus torch, in
            percentage points.
        pixel_agreement_pct: share of pixels where both masks agree, over all episodes.
        confidence_iou_pct: pooled IoU of the C' sets, ``None`` if a side has none.
        limits: the limits of the subject's precision (its gates and reported targets).
        passed: both gates hold: both mIoU deltas within ``limits.max_miou_delta_pt`` and the
            pixel agreement at least ``limits.min_pixel_agreement_pct`` (when set).
    """

    miou_delta_canet_pt: float
    miou_delta_pfenet_pt: float
    fbiou_delta_pt: float
    pixel_agreement_pct: float
    confidence_iou_pct: float | None
    limits: ParityLimits
    passed: bool

    @property
    def max_miou_delta_pt(self) -> float:
        """The mIoU gate: the largest |mIoU delta| allowed, in points."""
        return self.limits.max_miou_delta_pt

    @property
    def miou_delta_pt(self) -> float:
        """The larger absolute mIoU delta of the two protocols."""
        return max(abs(self.miou_delta_canet_pt), abs(self.miou_delta_pfenet_pt))


def score_masks(
    masks: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    class_of_episode: Sequence[int],
    class_ids: Sequence[int],
) -> AccuracyResult:
    """mIoU (canet, pfenet) and FB-IoU of predicted masks.

    Args:
        masks: per episode ``uint8 [H, W]`` 0/1 at the label's size.
        labels: per episode ``uint8 [H, W]`` in {0, 1, 255}.
        class_of_episode: per episode its class id.
        class_ids: the fold's classes.
    """
    accumulator = IoUAccumulator(class_ids)
    for mask, label, class_id in zip(masks, labels, class_of_episode, strict=True):
        accumulator.update(mask, label, class_id)
    result = accumulator.result()
    return AccuracyResult(result["miou_canet"], result["miou_pfenet"], result["fbiou"])


def mask_agreement(reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray]) -> float:
    """Percentage of pixels, over all episodes, where two sets of masks agree.

    >>> mask_agreement([np.array([[0, 1], [1, 1]])], [np.array([[0, 1], [0, 1]])])
    75.0
    """
    agree = sum(int(np.count_nonzero(a == b)) for a, b in zip(reference, candidate, strict=True))
    total = sum(a.size for a in reference)
    return 100.0 * agree / total if total else 100.0


def set_iou(reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray]) -> float:
    """Pooled IoU (percent) of binary sets: summed intersections over summed unions.

    Two empty sets agree perfectly (100).

    >>> set_iou([np.array([1, 1, 0, 0])], [np.array([1, 0, 1, 0])])
    33.33333333333333
    """
    intersection = union = 0
    for a, b in zip(reference, candidate, strict=True):
        first, second = a.astype(bool), b.astype(bool)
        intersection += int(np.count_nonzero(first & second))
        union += int(np.count_nonzero(first | second))
    return 100.0 * intersection / union if union else 100.0


def compare_to_reference(
    reference: AccuracyResult,
    candidate: AccuracyResult,
    reference_masks: Sequence[np.ndarray],
    candidate_masks: Sequence[np.ndarray],
    reference_sets: Sequence[np.ndarray] | None,
    candidate_sets: Sequence[np.ndarray] | None,
    limits: ParityLimits,
) -> ParityResult:
    """Parity of a subject's results with the reference's (PyTorch FP32).

    Args:
        reference / candidate: their accuracies.
        reference_masks / candidate_masks: per episode ``[H, W]`` masks.
        reference_sets / candidate_sets: per episode ``uint8 [K, h, w]`` C' sets, or ``None``.
        limits: the subject's precision's limits (``contract.ParityLimits``).
    """
    delta_canet = candidate.miou_canet - reference.miou_canet
    delta_pfenet = candidate.miou_pfenet - reference.miou_pfenet
    sets_iou = (
        set_iou(reference_sets, candidate_sets)
        if reference_sets is not None and candidate_sets is not None
        else None
    )
    agreement = mask_agreement(reference_masks, candidate_masks)
    min_agreement = limits.min_pixel_agreement_pct
    return ParityResult(
        miou_delta_canet_pt=delta_canet,
        miou_delta_pfenet_pt=delta_pfenet,
        fbiou_delta_pt=candidate.fbiou - reference.fbiou,
        pixel_agreement_pct=agreement,
        confidence_iou_pct=sets_iou,
        limits=limits,
        passed=max(abs(delta_canet), abs(delta_pfenet)) <= limits.max_miou_delta_pt
        and (min_agreement is None or agreement >= min_agreement),
    )
