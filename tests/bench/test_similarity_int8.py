"""python -m dpnet_bench.similarity_int8 at toy sizes: every INT8 kernel beside FP32, real ORT."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from dpnet_bench.profiling import make_session
from dpnet_bench.similarity_int8 import (
    VARIANTS,
    SimilarityOptions,
    fastest_usable,
    render_similarity_markdown,
    run_similarity_int8,
    similarity_graph,
    similarity_report_to_dict,
)
from dpnet_runtime.errors import InputError


def test_bad_options_are_input_errors() -> None:
    with pytest.raises(InputError, match="at least 1"):
        run_similarity_int8(SimilarityOptions(shots=(0,)))
    with pytest.raises(InputError, match="variant must be one of"):
        similarity_graph("int4", 1, 4, 4, (0.01, 0.01, (0.01, 128)))


@pytest.mark.parametrize("variant", VARIANTS)
def test_each_graph_matches_numpy_on_clear_maxima(variant: str) -> None:
    # Keys whose best matches win by a wide margin: every variant finds them.
    positions, channels = 6, 8
    rng = np.random.default_rng(0)
    query = rng.standard_normal((channels, positions)).astype(np.float32)
    query /= np.linalg.norm(query, axis=0, keepdims=True)
    order = rng.permutation(positions)
    support = (query[:, order].T + 0.05 * rng.standard_normal((positions, channels))).astype(
        np.float32
    )
    support /= np.linalg.norm(support, axis=1, keepdims=True)
    scores = support @ query
    scales = (1 / 127, 1 / 127, (2 / 255, 128))
    model = similarity_graph(variant, 1, positions, channels, scales)
    onnx.checker.check_model(model, full_check=True)
    forward, backward = make_session(model, 1).run(
        None, {"support_keys": support[None, None], "query_keys": query[None, None]}
    )
    np.testing.assert_array_equal(forward[0, 0], scores.argmax(-1))
    np.testing.assert_array_equal(backward[0, 0], scores.argmax(-2))
    np.testing.assert_array_equal(forward[0, 0], order)


@pytest.mark.slow
def test_toy_run_reports_every_variant_and_the_pick() -> None:
    options = SimilarityOptions(side=6, channels=16, shots=(1, 2), threads=1, repeats=2)
    report = run_similarity_int8(options)
    assert [(row.shots, row.variant) for row in report.rows] == [
        (shots, variant) for shots in (1, 2) for variant in VARIANTS
    ]
    rows = {(row.shots, row.variant): row for row in report.rows}
    assert rows[1, "fp32"].ratio_to_fp32 == 1.0
    assert rows[2, "fp32"].forward_agreement_pct == 100.0
    assert "MatMulInteger" in rows[1, "matmul_integer"].kernels
    assert "QLinearMatMul" in rows[1, "qlinear_matmul"].kernels
    # The same integer products: the QDQ MatMul and MatMulInteger find the same matches.
    for shots in (1, 2):
        qdq, integer = rows[shots, "qdq"], rows[shots, "matmul_integer"]
        assert qdq.forward_agreement_pct == integer.forward_agreement_pct
        best = fastest_usable(report, shots)
        assert best is not None and best.variant != "fp32"
    assert (report.positions, report.channels) == (36, 16)
    data = json.loads(json.dumps(similarity_report_to_dict(report)))
    assert data["rows"][0]["latency"]["count"] == 2
    markdown = render_similarity_markdown(report, "python -m dpnet_bench.similarity_int8")
    assert "| 2 | matmul_integer |" in markdown and "K = 2: fastest whose matches" in markdown
