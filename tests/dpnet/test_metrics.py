"""IoUAccumulator against hand-computed values (percent)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dpnet.metrics import IoUAccumulator
from dpnet_runtime.errors import InputError

# pred fg: (0,0) (0,1) (1,1); label fg: (0,0) (1,0) (1,1); ignore: (0,1) (1,2).
PRED = np.array([[1, 1, 0], [0, 1, 0]], dtype=np.uint8)
LABEL = np.array([[1, 255, 0], [1, 1, 255]], dtype=np.uint8)


def test_both_protocols_and_fbiou_on_one_episode() -> None:
    acc = IoUAccumulator([1, 2])
    acc.update(PRED, LABEL, class_id=1)
    result = acc.result()
    # I = 2; canet U = 4 (the prediction on the ignore pixel (0,1) counts); pfenet U = 3.
    assert result["per_class"][1]["iou_canet"] == pytest.approx(50.0)
    assert result["per_class"][1]["iou_pfenet"] == pytest.approx(200 / 3)
    assert result["miou_canet"] == pytest.approx(50.0)
    assert result["miou_pfenet"] == pytest.approx(200 / 3)
    # Valid pixels (0,0) (0,2) (1,0) (1,1): background I = 1 ((0,2)), U = 2 ((0,2), (1,0)).
    assert result["fbiou"] == pytest.approx((50.0 + 200 / 3) / 2)
    assert result["episodes"] == 1
    assert 2 not in result["per_class"]


def test_intersections_and_unions_are_summed_over_episodes_not_averaged() -> None:
    acc = IoUAccumulator([1])
    acc.update(np.array([[1, 1, 0, 0]]), np.array([[1, 0, 0, 0]]), class_id=1)  # 1 / 2
    acc.update(np.array([[1, 1, 1, 0]]), np.array([[1, 1, 1, 0]]), class_id=1)  # 3 / 3
    assert acc.result()["miou_pfenet"] == pytest.approx(80.0)  # 4 / 5, not (50 + 100) / 2


def test_miou_averages_seen_classes_and_empty_prediction_scores_zero() -> None:
    acc = IoUAccumulator([1, 2, 3])
    acc.update(PRED, LABEL, class_id=1)
    acc.update(np.zeros((2, 2), np.uint8), np.array([[0, 1], [1, 255]]), class_id=2)
    result = acc.result()
    assert result["per_class"][2] == {"iou_canet": 0.0, "iou_pfenet": 0.0, "episodes": 1}
    assert sorted(result["per_class"]) == [1, 2]  # class 3 never seen: left out
    assert result["miou_canet"] == pytest.approx(25.0)
    assert result["miou_pfenet"] == pytest.approx(100 / 3)


def test_empty_label() -> None:
    empty = np.zeros((2, 2), np.uint8)
    nothing_to_find = IoUAccumulator([1])
    nothing_to_find.update(empty, empty, class_id=1)
    assert nothing_to_find.result()["miou_canet"] == 100.0
    assert nothing_to_find.result()["fbiou"] == 100.0  # background 4/4, foreground 0/0
    false_alarm = IoUAccumulator([1])
    false_alarm.update(np.array([[1, 0], [0, 0]]), empty, class_id=1)
    assert false_alarm.result()["miou_canet"] == 0.0
    assert false_alarm.result()["fbiou"] == pytest.approx((75.0 + 0.0) / 2)


def test_prediction_only_on_ignore_pixels_differs_between_protocols() -> None:
    acc = IoUAccumulator([1])
    acc.update(np.array([[1, 1, 0]]), np.array([[1, 255, 0]]), class_id=1)
    assert acc.result()["miou_canet"] == pytest.approx(50.0)
    assert acc.result()["miou_pfenet"] == pytest.approx(100.0)


def test_no_episode_gives_nan() -> None:
    result = IoUAccumulator([1]).result()
    assert math.isnan(result["miou_canet"]) and math.isnan(result["fbiou"])
    assert result["per_class"] == {}


@pytest.mark.parametrize(
    ("pred", "label", "class_id"),
    [
        (np.zeros((2, 2)), np.zeros((2, 3)), 1),  # shape mismatch
        (np.full((2, 2), 2), np.zeros((2, 2)), 1),  # pred not 0/1
        (np.zeros((2, 2)), np.full((2, 2), 7), 1),  # label not 0/1/255
        (np.zeros((2, 2)), np.zeros((2, 2)), 9),  # unknown class
    ],
)
def test_bad_input_raises(pred: np.ndarray, label: np.ndarray, class_id: int) -> None:
    with pytest.raises(InputError):
        IoUAccumulator([1]).update(pred, label, class_id=class_id)
