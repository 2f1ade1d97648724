"""python -m dpnet_bench.localize: a planted divergence is found where it was planted."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, numpy_helper

from dpnet_bench.localize import LocalizeOptions, localize
from dpnet_export.onnx_to_fp16 import node_scopes
from dpnet_runtime.errors import InputError, ModelFileError


def _planted_copy(export_dir: Path, folder: Path) -> str:
    """FP32 graphs plus a "dpnet_int8.onnx" that is dpnet.onnx with one layer2 conv's weight
    scaled by 1.3; returns that conv's (first) node name."""
    for name in ("dpnet.onnx", "dpnet_support.onnx"):
        shutil.copy(export_dir / name, folder)
    model = onnx.load(folder / "dpnet.onnx")
    conv = next(
        node
        for node in model.graph.node
        if node.op_type == "Conv" and "layer2" in ".".join(node_scopes(node))
    )
    weight = next(t for t in model.graph.initializer if t.name == conv.input[1])
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * 1.3, weight.name))
    onnx.save(model, folder / "dpnet_int8.onnx")
    return conv.name


@pytest.mark.slow
def test_planted_divergence_is_the_first_node_reported(
    tiny_segmenting_export_dir: Path, tmp_path: Path
) -> None:
    planted = _planted_copy(tiny_segmenting_export_dir, tmp_path)
    report = localize(LocalizeOptions(artifacts=tmp_path, precision="int8", episodes=2))
    first = report.first_beyond(3)
    assert first[0].node == planted and first[0].op_type == "Conv"
    assert 0.29 < first[0].divergence < 0.31  # a 1.3x weight: 30 % relative error
    upstream = report.tensors[: [t.node for t in report.tensors].index(planted)]
    assert upstream and max(t.divergence for t in upstream) < 1e-6
    scopes = {scope: past for scope, _, past in report.by_scope()}
    assert scopes["model.backbone.bn1"] is None and scopes["model.backbone.layer2.0.conv1"]
    assert any(t.exact and t.op_type == "ArgMax" for t in report.tensors)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("precision", "folder"),
    [("int8", "tiny_segmenting_export_dir"), ("fp16", "tiny_trained_export_dir")],
)
def test_cli_prints_first_nodes_and_scopes(
    precision: str, folder: str, request: pytest.FixtureRequest
) -> None:
    artifacts: Path = request.getfixturevalue(folder)
    completed = subprocess.run(
        [sys.executable, "-m", "dpnet_bench.localize", "--model",
         str(artifacts), "--precision", precision, "--episodes", "1"],
        capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "COLUMNS": "250"},
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    assert f"dpnet_{precision}.onnx vs dpnet.onnx: first nodes past divergence" in completed.stdout
    assert "model.ccm" in completed.stdout and "model.backbone.layer1" in completed.stdout


@pytest.mark.slow
def test_int8_trunk_stays_close_and_the_ccm_argmax_is_where_it_diverges(
    tiny_segmenting_export_dir: Path,
) -> None:
    report = localize(LocalizeOptions(artifacts=tiny_segmenting_export_dir, episodes=1))
    trunk = [t for t in report.tensors if t.scope.startswith("model.backbone")]
    # Compared as the consumers see them: a Relu folded into its Q clamp included.
    assert len(trunk) > 20 and max(t.divergence for t in trunk) < 0.1
    assert {t.op_type for t in report.first_beyond(2)} <= {"ArgMax", "GatherElements", "Cast"}


def test_unknown_precision_and_missing_copy_are_clear(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="--precision must be one of fp16, int8"):
        localize(LocalizeOptions(artifacts=tmp_path, precision="int4"))
    with pytest.raises(ModelFileError, match=r"dpnet\.onnx does not exist"):
        localize(LocalizeOptions(artifacts=tmp_path, precision="int8"))
    empty = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], []))
    onnx.save(empty, tmp_path / "dpnet.onnx")
    with pytest.raises(
        ModelFileError, match=r"dpnet_int8\.onnx does not exist; .* --precision int8"
    ):
        localize(LocalizeOptions(artifacts=tmp_path, precision="int8"))


@pytest.mark.slow
def test_the_int8_similarity_share_is_before_and_after(tiny_segmenting_export_dir: Path) -> None:
    report = localize(LocalizeOptions(artifacts=tiny_segmenting_export_dir, episodes=2))
    similarity = report.similarity
    assert similarity is not None and similarity.quantized
    assert similarity.op_type == "MatMulInteger"
    assert 0 < similarity.scores_error < 0.1  # dequantized INT8 scores stay close
    assert sorted(match.axis for match in similarity.matches) == [-2, -1]
    for match in similarity.matches:
        assert 0 <= match.before_pct <= 100 and 0 <= match.after_pct <= 100
    # int32 scores are compared dequantized by the probe, not raw in the tensor list.
    assert all(t.node != similarity.node for t in report.tensors)


def _copy_as_int8(export_dir: Path, folder: Path) -> onnx.ModelProto:
    """The FP32 graphs plus dpnet.onnx itself under the name dpnet_int8.onnx (returned)."""
    for name in ("dpnet.onnx", "dpnet_support.onnx"):
        shutil.copy(export_dir / name, folder)
    return onnx.load(folder / "dpnet.onnx")


@pytest.mark.slow
def test_an_fp32_similarity_adds_nothing_and_an_fp16_round_trip_is_named(
    tiny_trained_export_dir: Path, tmp_path: Path
) -> None:
    model = _copy_as_int8(tiny_trained_export_dir, tmp_path)
    onnx.save(model, tmp_path / "dpnet_int8.onnx")
    same = localize(LocalizeOptions(artifacts=tmp_path, episodes=2)).similarity
    assert same is not None and not same.quantized and same.rounded_to is None
    assert same.scores_error == 0.0
    assert [(m.before_pct, m.after_pct) for m in same.matches] == [(0.0, 0.0), (0.0, 0.0)]
    # Round the scores through FP16 between the similarity and its ArgMax.
    argmax = [n for n in model.graph.node if n.op_type == "ArgMax" and "ccm" in node_scopes(n)]
    scores = argmax[0].input[0]
    index = min(list(model.graph.node).index(node) for node in argmax)
    casts = [
        onnx.helper.make_node("Cast", [scores], ["planted_fp16"], to=TensorProto.FLOAT16),
        onnx.helper.make_node("Cast", ["planted_fp16"], ["planted"], to=TensorProto.FLOAT),
    ]
    for offset, cast in enumerate(casts):
        model.graph.node.insert(index + offset, cast)
    for node in argmax:
        node.input[0] = "planted"
    onnx.save(model, tmp_path / "dpnet_int8.onnx")
    rounded = localize(LocalizeOptions(artifacts=tmp_path, episodes=2)).similarity
    assert rounded is not None and rounded.rounded_to == "FLOAT16"
    assert 0 < rounded.scores_error < 1e-3  # FP16 keeps 11 bits
    # The keys are FP32's: every difference is the round trip's.
    assert all(m.before_pct == 0.0 and m.after_pct >= 0.0 for m in rounded.matches)
