"""The CCM micro-benchmark at toy sizes (real export and ONNX Runtime, small shapes)."""

from __future__ import annotations

import json

import pytest

from dpnet_bench.ccm_micro import ccm_report_to_dict, render_ccm_markdown, run_ccm_micro
from dpnet_bench.schema import CcmOptions
from dpnet_runtime.errors import InputError


def test_bad_options_are_input_errors() -> None:
    with pytest.raises(InputError, match="at least 1"):
        run_ccm_micro(CcmOptions(sides=(0,)))


@pytest.mark.slow
def test_toy_sizes_give_rows_and_gemm_references() -> None:
    options = CcmOptions(sides=(5, 9), channels=16, shots=2, threads=1, repeats=2, gemm_size=64)
    report = run_ccm_micro(options)
    assert [row.side for row in report.rows] == [5, 9]
    small, large = report.rows
    assert large.positions == 81
    assert large.similarity_matrix_mb == pytest.approx(2 * 81 * 81 * 4 / 2**20)
    assert small.ccm.count == 2 and small.similarity_gflops_per_s > 0
    assert report.plain_gemm_gflops_per_s > 0 and report.numpy_gemm_gflops_per_s > 0
    assert report.episode is None and report.ccm_share_pct is None
    data = json.loads(json.dumps(ccm_report_to_dict(report)))
    assert data["rows"][1]["similarity_matrix_mb"] == pytest.approx(large.similarity_matrix_mb)
    assert data["options"]["episode_graph"] is None
    markdown = render_ccm_markdown(report, "python -m dpnet_bench.ccm_micro")
    assert "| 9 | 81 |" in markdown
    assert "plain 64³ MatMul" in markdown
