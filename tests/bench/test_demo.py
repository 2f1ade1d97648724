"""The demo (the main job of the quick start), on a small budget: train, compare, export, draw."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dpnet_bench.demo import DemoOptions, run_demo
from dpnet_runtime import contract

from ..runtime.test_sheet import LEGEND_BANDS, text_bands


@pytest.mark.slow
def test_demo_trains_evaluates_exports_and_draws(tmp_path: Path) -> None:
    options = DemoOptions(out=tmp_path, minutes=2.0, steps=4, eval_episodes=3, threads=2)
    result = run_demo(options)
    assert result.training.steps == 4
    assert (tmp_path / "run" / "last.pt").is_file()
    assert result.trained.episodes == result.untrained.episodes == 3
    # The export is part of the demo: every graph file must exist and be non-empty.
    expected = {
        tmp_path / "onnx" / contract.FORMATS["ort"].file_name(role) for role in contract.GRAPHS
    }
    assert set(result.onnx_files) == expected
    assert all(path.stat().st_size > 0 for path in expected)
    picture = np.asarray(Image.open(result.picture))
    assert picture.ndim == 3 and picture.shape[1] > picture.shape[0]  # three panels a row
    # Two title lines (class and IoU, model), the legend, "support 1", the query row's captions.
    assert text_bands(picture) == 2 + LEGEND_BANDS + 2
