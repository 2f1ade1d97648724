"""python -m dpnet_bench.int8_parts: FP32 and INT8 graphs timed and profiled part by part."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from dpnet_bench.int8_parts import (
    PARTS,
    PartsOptions,
    node_parts,
    parts_report_to_dict,
    render_parts_markdown,
    run_int8_parts,
)
from dpnet_export.onnx_to_fp16 import node_scopes
from dpnet_runtime.errors import InputError, ModelFileError


def test_bad_options_and_missing_graphs_are_clear(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="at least 1"):
        run_int8_parts(PartsOptions(artifacts=tmp_path, episodes=0))
    with pytest.raises(ModelFileError, match=r"dpnet\.onnx does not exist"):
        run_int8_parts(PartsOptions(artifacts=tmp_path))


@pytest.mark.slow
def test_parts_name_the_ccm_and_the_float_islands(tiny_segmenting_export_dir: Path) -> None:
    model = onnx.load(tiny_segmenting_export_dir / "dpnet_int8.onnx")
    parts = node_parts(model)
    by_name = {node.name: node for node in model.graph.node}
    similarity = [by_name[name] for name, part in parts.items() if part == "ccm similarity"]
    assert sorted(node.op_type for node in similarity) == [
        "MatMulInteger", "QuantizeLinear", "QuantizeLinear",
    ]  # fmt: skip
    argmax = [name for name, part in parts.items() if part == "ccm argmax"]
    assert len(argmax) == 2 and all(by_name[name].op_type == "ArgMax" for name in argmax)
    islands = [by_name[name] for name, part in parts.items() if part == "float islands"]
    scopes = {".".join(node_scopes(node)) for node in islands}
    assert "model.decoder.classifier" in scopes and "model.discriminator" in scopes
    assert all(by_name[name].op_type != "QLinearConv" for name in parts)


@pytest.mark.slow
def test_run_reports_both_graphs_with_every_part(tiny_segmenting_export_dir: Path) -> None:
    report = run_int8_parts(
        PartsOptions(tiny_segmenting_export_dir, shots=2, episodes=2, threads=1, profile_runs=1)
    )
    assert [graph.role for graph in report.graphs] == ["episode", "query"]
    for graph in report.graphs:
        assert set(graph.fp32_parts_ms) == set(graph.int8_parts_ms) == set(PARTS)
        assert graph.fp32.count == graph.int8.count == 2
        assert graph.fp32_parts_ms["network"] > 0 and graph.int8_parts_ms["ccm argmax"] > 0
        assert graph.ratio == graph.int8.p50_ms / graph.fp32.p50_ms
        untouched = sum(graph.int8_parts_ms[p] for p in ("ccm argmax", "ccm rest", "float islands"))
        assert graph.floor == pytest.approx(untouched / graph.fp32.p50_ms)
    data = json.loads(json.dumps(parts_report_to_dict(report)))
    assert data["options"]["artifacts"] == str(tiny_segmenting_export_dir)
    markdown = render_parts_markdown(report, "python -m dpnet_bench.int8_parts")
    assert "| query | ccm similarity |" in markdown and "floor" in markdown
