"""Mask and confidence-set agreement, accuracy scoring and the parity verdict."""

from __future__ import annotations

import numpy as np
import pytest

from dpnet_bench.parity import (
    AccuracyResult,
    compare_to_reference,
    mask_agreement,
    score_masks,
    set_iou,
)
from dpnet_runtime.contract import ParityLimits


def test_mask_agreement_pools_pixels_over_episodes() -> None:
    reference = [np.array([[0, 1], [1, 1]]), np.zeros((2, 3))]
    candidate = [np.array([[0, 1], [0, 1]]), np.zeros((2, 3))]
    assert mask_agreement(reference, candidate) == pytest.approx(100 * 9 / 10)
    assert mask_agreement(reference, reference) == 100.0


def test_set_iou_pools_and_treats_two_empty_sets_as_equal() -> None:
    assert set_iou([np.array([1, 1, 0, 0])], [np.array([1, 0, 1, 0])]) == pytest.approx(100 / 3)
    assert set_iou([np.zeros((1, 3, 3))], [np.zeros((1, 3, 3))]) == 100.0
    # Pooled, not averaged: the big set dominates.
    big = np.ones(98, dtype=np.uint8)
    assert set_iou([np.array([1]), big], [np.array([0]), big]) == pytest.approx(100 * 98 / 99)


def test_score_masks_both_protocols() -> None:
    label = np.array([[1, 255], [0, 0]], dtype=np.uint8)
    pred = np.array([[1, 1], [0, 0]], dtype=np.uint8)
    accuracy = score_masks([pred], [label], [3], class_ids=[3, 4])
    assert accuracy.miou_pfenet == 100.0  # the ignore pixel is excluded
    assert accuracy.miou_canet == 50.0  # the ignore pixel counts as background
    assert accuracy.fbiou == 100.0


def test_compare_to_reference_threshold_is_inclusive_and_uses_both_protocols() -> None:
    masks = [np.zeros((2, 2), dtype=np.uint8)]
    reference = AccuracyResult(50.0, 60.0, 70.0)
    within = compare_to_reference(
        reference,
        AccuracyResult(50.1, 59.9, 70.0),
        masks,
        masks,
        None,
        None,
        ParityLimits(0.1 + 1e-9),
    )
    assert within.passed
    assert within.miou_delta_pt == pytest.approx(0.1)
    assert within.confidence_iou_pct is None
    beyond = compare_to_reference(
        reference, AccuracyResult(50.0, 60.5, 70.0), masks, masks, masks, masks, ParityLimits(0.3)
    )
    assert not beyond.passed
    assert beyond.miou_delta_pfenet_pt == pytest.approx(0.5)
    assert beyond.pixel_agreement_pct == 100.0
    assert beyond.confidence_iou_pct == 100.0


def test_the_pixel_gate_fails_a_subject_whose_miou_is_within() -> None:
    reference = AccuracyResult(50.0, 60.0, 70.0)
    ones, half = [np.ones((2, 2), np.uint8)], [np.array([[1, 1], [0, 0]], np.uint8)]
    limits = ParityLimits(max_miou_delta_pt=1.0, min_pixel_agreement_pct=97.0)
    same = compare_to_reference(reference, reference, ones, ones, None, None, limits)
    assert same.passed and same.max_miou_delta_pt == 1.0
    differ = compare_to_reference(reference, reference, ones, half, None, None, limits)
    assert differ.pixel_agreement_pct == 50.0 and not differ.passed
    assert compare_to_reference(
        reference, reference, ones, half, None, None, ParityLimits(1.0)
    ).passed  # without a pixel gate, the mIoU alone decides
