"""Rules several packages share, each in one function: pinned values, not the code's own output.

- ``errors.one_line``: the exception text of every one-line message (the CLI boundary, the
  runtime's model-file errors, the exporter, the checkpoint loader).
- ``preprocess.scale_sides``: the side each inference scale runs at, in PyTorch evaluation and
  in the runtime's Predictor alike.
- ``config.check_beta``: the discriminator threshold's range, for the config, evaluation and
  export.
"""

from __future__ import annotations

import math

import pytest

from dpnet.config import check_beta, preset
from dpnet.eval.evaluate import EvalOptions
from dpnet_export.torch_to_onnx import ExportOptions, export_onnx
from dpnet_runtime.errors import InputError, one_line
from dpnet_runtime.preprocess import scale_sides


@pytest.mark.parametrize(
    ("exc", "limit", "expected"),
    [
        (ValueError("bad\n  value\tthere "), None, "bad value there"),
        (KeyError(), None, "KeyError"),
        (OSError("x" * 9), 4, "xxxx..."),
        (OSError("x" * 4), 4, "xxxx"),
        (RuntimeError("first line\nsecond line"), 12, "first line s..."),
    ],
)
def test_one_line(exc: BaseException, limit: int | None, expected: str) -> None:
    assert one_line(exc, limit) == expected


def test_scale_sides_round_and_keep_at_least_one_pixel() -> None:
    assert scale_sides(321, (0.7, 1.0, 1.3)) == (225, 321, 417)
    assert scale_sides(129, (0.5,)) == (64,)  # 64.5 rounds to even
    assert scale_sides(33, (0.001,)) == (1,)


@pytest.mark.parametrize("scales", [(), (0.0,), (1.0, -0.5), (math.nan,)])
def test_scale_sides_refuse_what_is_not_a_positive_scale(scales: tuple[float, ...]) -> None:
    with pytest.raises(InputError, match="multi_scale must be positive"):
        scale_sides(321, scales)
    with pytest.raises(InputError, match="scales must be positive"):
        EvalOptions(scales=scales)


@pytest.mark.parametrize("beta", [-0.01, 1.01, math.nan])
def test_beta_outside_0_1_is_refused_everywhere(beta: float, tmp_path) -> None:
    with pytest.raises(InputError, match=r"beta must lie in \[0, 1\]"):
        check_beta(beta)
    with pytest.raises(InputError, match=r"beta_test must lie in \[0, 1\]"):
        preset("tiny", beta_test=beta)
    with pytest.raises(InputError, match=r"beta must lie in \[0, 1\]"):
        EvalOptions(beta=beta)
    with pytest.raises(InputError, match=r"--beta must lie in \[0, 1\]"):
        export_onnx(tmp_path / "model.pt", tmp_path, ExportOptions(beta=beta))


@pytest.mark.parametrize("beta", [0.0, 0.2, 1.0])
def test_beta_inside_0_1_is_accepted(beta: float) -> None:
    check_beta(beta)
    assert EvalOptions(beta=beta).beta == beta
