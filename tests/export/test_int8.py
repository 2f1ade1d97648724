"""The INT8 copies: valid graphs, float islands, TensorRT rules, parity, determinism, errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from folder_data import write_folder_dataset
from onnx import TensorProto, numpy_helper

from dpnet.data import build_dataset
from dpnet_bench.schema import BenchOptions
from dpnet_bench.suite import run_suite
from dpnet_export.calibration import (
    CalibrationOptions,
    check_calibration_options,
    load_calibration_set,
    role_feeds,
)
from dpnet_export.lint import lint_onnx
from dpnet_export.onnx_to_fp16 import node_scopes
from dpnet_export.onnx_to_int8 import INT8_FLAVOURS, float32_to_int8, fold_batch_norm
from dpnet_export.torch_to_onnx import _write_all, check_graph
from dpnet_runtime import Predictor, contract
from dpnet_runtime.console import EXIT_CHECK_FAILED, EXIT_USAGE, EXIT_USER_ERROR
from dpnet_runtime.errors import DatasetError, ExportError, InputError
from dpnet_runtime.preprocess import prepare_query, prepare_support

SIZE = 129
ROLES = ("dpnet", "dpnet_support", "dpnet_query")
QDQ = ("QuantizeLinear", "DequantizeLinear")


def _zero_points(model: onnx.ModelProto) -> list[np.ndarray]:
    values = {tensor.name: numpy_helper.to_array(tensor) for tensor in model.graph.initializer}
    return [
        values[node.input[2]]
        for node in model.graph.node
        if node.op_type in QDQ and len(node.input) > 2 and node.input[2] in values
    ]


def _ccm_touches_qdq(model: onnx.ModelProto) -> list[str]:
    ccm = [node for node in model.graph.node if "ccm" in node_scopes(node)]
    ccm_inputs = {name for node in ccm for name in node.input}
    ccm_outputs = {name for node in ccm for name in node.output}
    return [
        node.name
        for node in model.graph.node
        if node.op_type in QDQ and (set(node.output) & ccm_inputs or set(node.input) & ccm_outputs)
    ]


def _similarity_quantizers(model: onnx.ModelProto) -> tuple[onnx.NodeProto, list[str]]:
    """The CCM MatMul (or MatMulInteger) both ArgMax read, and the Q/DQ chain of its inputs."""
    producers = {name: node for node in model.graph.node for name in node.output}
    argmax = [n for n in model.graph.node if "ccm" in node_scopes(n) and n.op_type == "ArgMax"]
    assert len(argmax) == 2 and argmax[0].input[0] == argmax[1].input[0]
    similarity = producers[argmax[0].input[0]]
    chain = []
    for name in similarity.input[:2]:
        while name in producers and producers[name].op_type in QDQ:
            chain.append(producers[name].name)
            name = producers[name].input[0]
    return similarity, chain


@pytest.mark.slow
@pytest.mark.parametrize("role", ROLES)
def test_int8_graphs_are_valid_and_quantize_only_the_ccm_similarity(
    tiny_segmenting_export_dir: Path, role: str
) -> None:
    for name, target in ((f"{role}_int8.onnx", "ort"), (f"{role}_int8_trt.onnx", "trt")):
        model = onnx.load(tiny_segmenting_export_dir / name)
        onnx.checker.check_model(model, full_check=True)
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
        ops = [node.op_type for node in model.graph.node]
        assert ops.count("DequantizeLinear") > 10 and "BatchNormalization" not in ops, name
        if role != "dpnet_support":
            # --int8-ccm (the default): the keys of the similarity are quantized, nothing
            # else of the CCM is (a Q outside the scope may quantize a key before it enters).
            similarity, chain = _similarity_quantizers(model)
            touching = _ccm_touches_qdq(model)
            assert touching and set(touching) <= set(chain), (name, touching, chain)
            values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
            quantizers = [n for n in model.graph.node if n.name in chain]
            scales = [values[n.input[1]] for n in quantizers]
            assert all(s.size == 1 and 0 < float(s) < 1 / 127 for s in scales), name  # per tensor
            zero_points = [values[n.input[2]] for n in quantizers]
            if target == "ort":
                # Support keys u8 with zero point 128 x query keys s8 -> int32 scores.
                assert similarity.op_type == "MatMulInteger" and len(chain) == 2, name
                support_zero, query_zero = (values[name] for name in similarity.input[2:4])
                assert (support_zero.dtype, support_zero.item()) == (np.uint8, 128), name
                assert (query_zero.dtype, query_zero.item()) == (np.int8, 0), name
            else:
                assert similarity.op_type == "MatMul" and len(chain) == 4, name
                assert all(z.dtype == np.int8 and z.item() == 0 for z in zero_points), name
        has_ccm = any("ccm" in node_scopes(node) for node in model.graph.node)
        assert has_ccm == (role != "dpnet_support"), name  # the CCM runs with the query
        properties = {prop.key: prop.value for prop in model.metadata_props}
        assert properties[contract.META_PRECISION] == "int8"
        assert properties[contract.META_INT8_TARGET] == target
        assert json.loads(properties[contract.META_CALIBRATION]) == {
            "dataset": "synthetic", "fold": 0, "split": "train", "episodes": 12, "seed": 0,
            "method": "minmax",
        }  # fmt: skip
        zero_points = _zero_points(model)
        if target == "trt":
            assert all(z.dtype == np.int8 and not z.any() for z in zero_points), name
            report = lint_onnx(model)
            assert report.passed, report.errors
        else:
            assert any(z.dtype == np.uint8 for z in zero_points), name  # U8S8
            assert not lint_onnx(model, "trt").passed  # the CPU flavour is not for TensorRT
            report = lint_onnx(model)  # its metadata says ort: TensorRT's Q/DQ rules are off
            assert report.target == "ort" and report.passed, report.errors
            assert any("not applied" in f.message for f in report.findings if f.severity == "info")


@pytest.mark.slow
def test_a_qdq_pair_planted_before_the_ccm_breaks_the_op_rules(
    tiny_segmenting_export_dir: Path,
) -> None:
    model = onnx.load(tiny_segmenting_export_dir / "dpnet_int8.onnx")
    check_graph(model, "dpnet_int8.onnx")
    matmul = next(n for n in model.graph.node if "ccm" in node_scopes(n) and n.op_type == "MatMul")
    scale, zero_point = "planted_scale", "planted_zero_point"
    model.graph.initializer.extend(
        [
            numpy_helper.from_array(np.array(0.01, np.float32), scale),
            numpy_helper.from_array(np.array(0, np.int8), zero_point),
        ]
    )
    original = matmul.input[0]
    pair = [
        onnx.helper.make_node("QuantizeLinear", [original, scale, zero_point], ["planted_q"]),
        onnx.helper.make_node("DequantizeLinear", ["planted_q", scale, zero_point], ["planted"]),
    ]
    matmul.input[0] = "planted"
    index = list(model.graph.node).index(matmul)
    for offset, node in enumerate(pair):
        model.graph.node.insert(index + offset, node)
    with pytest.raises(ExportError, match="quantizes the CCM"):
        check_graph(model, "planted.onnx")


@pytest.mark.slow
def test_no_int8_ccm_keeps_the_whole_ccm_float(tiny_segmenting_export_dir: Path) -> None:
    episode = onnx.load(tiny_segmenting_export_dir / "dpnet.onnx")
    support = onnx.load(tiny_segmenting_export_dir / "dpnet_support.onnx")
    calibration = load_calibration_set(CalibrationOptions(episodes=2), size=SIZE, raw_input=False)
    feeds = role_feeds(calibration.feeds, "episode", support)
    for target, model in float32_to_int8(episode, feeds, int8_ccm=False).items():
        assert _ccm_touches_qdq(model) == [], target
        similarity, chain = _similarity_quantizers(model)
        assert similarity.op_type == "MatMul" and chain == [], target
        check_graph(model, target)


@pytest.mark.slow
def test_a_similarity_quantized_on_one_side_breaks_the_op_rules(
    tiny_segmenting_export_dir: Path,
) -> None:
    model = onnx.load(tiny_segmenting_export_dir / "dpnet_int8_trt.onnx")
    check_graph(model, "dpnet_int8_trt.onnx")
    similarity, _ = _similarity_quantizers(model)
    producers = {name: node for node in model.graph.node for name in node.output}
    dequantize = producers[similarity.input[1]]
    similarity.input[1] = producers[dequantize.input[0]].input[0]  # the float query keys
    with pytest.raises(ExportError, match="quantizes the CCM"):
        check_graph(model, "one-sided.onnx")
    assert any("on both inputs" in f.message for f in lint_onnx(model).errors)


def test_stale_low_precision_copies_are_removed(tmp_path: Path) -> None:
    names = [
        "dpnet.onnx", "dpnet_int8.onnx", "dpnet_query_int8_trt.onnx", "dpnet_support_fp16.onnx",
        "dpnet_int8.engine", "notes.txt",
    ]  # fmt: skip
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    _write_all(tmp_path, {"dpnet.onnx": onnx.ModelProto()})
    # Graph copies that no longer match the FP32 graphs go; engines and other files stay.
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "dpnet.onnx",
        "dpnet_int8.engine",
        "notes.txt",
    ]


@pytest.mark.slow
def test_classifier_stays_float(tiny_segmenting_export_dir: Path) -> None:
    model = onnx.load(tiny_segmenting_export_dir / "dpnet_int8.onnx")
    weights = {tensor.name: tensor for tensor in model.graph.initializer}
    classifier = [n for n in model.graph.node if "classifier" in node_scopes(n)]
    assert [node.op_type for node in classifier] == ["Conv"]
    weight = weights[classifier[0].input[1]]
    assert weight.data_type == TensorProto.FLOAT  # an FP32 initializer, no DequantizeLinear


@pytest.mark.slow
def test_cpu_int8_agrees_with_torch_fp32_within_the_gate(
    tiny_segmenting_checkpoint: Path, tiny_segmenting_export_dir: Path
) -> None:
    options = BenchOptions(
        checkpoint=tiny_segmenting_checkpoint,
        artifacts=tiny_segmenting_export_dir,
        backends=("torch", "ort-int8"),
        episodes=40,
        warmup_s=0.0,
        threads=1,
    )
    row = {result.backend: result for result in run_suite(options).results}["ort-int8"]
    assert row.status == "passed", row.reason
    assert row.parity is not None and row.parity.confidence_iou_pct is not None
    assert row.parity.miou_delta_pt <= 1.0
    assert row.parity.pixel_agreement_pct >= 97.0
    # Same episodes, same scales: the split pair gives the episode graph's masks.
    assert row.split_agreement_pct is not None and row.split_agreement_pct >= 99.9


def _black_feeds() -> list[dict[str, np.ndarray]]:
    black = np.zeros((SIZE, SIZE, 3), np.uint8)
    images, masks = prepare_support(
        [black], [np.ones((SIZE, SIZE), np.uint8)], SIZE, raw_input=False, max_shots=None
    )
    query = prepare_query(black, SIZE, raw_input=False)
    return [
        {
            contract.SUPPORT_IMAGES: images,
            contract.SUPPORT_MASKS: masks,
            contract.QUERY_IMAGE: query,
        }
    ]


@pytest.mark.slow
def test_scales_from_black_images_fail_the_bench_gate_with_exit_3(
    tiny_segmenting_checkpoint: Path, tiny_segmenting_export_dir: Path, tmp_path: Path
) -> None:
    fp32 = {}
    for role, stem in zip(contract.GRAPHS, ROLES, strict=True):
        shutil.copy(tiny_segmenting_export_dir / f"{stem}.onnx", tmp_path)
        fp32[role] = onnx.load(tmp_path / f"{stem}.onnx")
    for role, stem in zip(contract.GRAPHS, ROLES, strict=True):
        feeds = role_feeds(_black_feeds(), role, fp32[contract.SUPPORT])
        planted = float32_to_int8(fp32[role], feeds, flavours=[INT8_FLAVOURS["ort"]])["ort"]
        onnx.save(planted, tmp_path / f"{stem}_int8.onnx")
    command = [
        sys.executable, "-c", "from dpnet_bench.cli import main; main()",
        "--ckpt", str(tiny_segmenting_checkpoint), "--model", str(tmp_path),
        "--backends", "torch,ort-int8", "--episodes", "20", "--warmup-s", "0", "--threads", "1",
    ]  # fmt: skip
    wide = {**os.environ, "COLUMNS": "400"}
    failed = subprocess.run(
        command, capture_output=True, text=True, timeout=600, check=False, env=wide
    )
    assert failed.returncode == EXIT_CHECK_FAILED, failed.stderr
    assert "❗ parity failed" in failed.stdout and "❗ ort-int8: mIoU delta" in failed.stdout
    relaxed = subprocess.run(
        [*command, "--max-miou-delta", "int8=100", "--min-pixel-agreement", "int8=0"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env=wide,
    )
    assert relaxed.returncode == 0, relaxed.stdout + relaxed.stderr


@pytest.mark.slow
def test_calibration_is_deterministic(tiny_segmenting_export_dir: Path) -> None:
    support = onnx.load(tiny_segmenting_export_dir / "dpnet_support.onnx")

    def quantized(seed: int) -> bytes:
        options = CalibrationOptions(episodes=3, seed=seed)
        calibration = load_calibration_set(options, size=SIZE, raw_input=False)
        feeds = role_feeds(calibration.feeds, "support", support)
        return float32_to_int8(support, feeds)["ort"].SerializeToString()

    first = quantized(0)
    assert quantized(0) == first
    assert quantized(1) != first  # other episodes, other scales


@pytest.mark.slow
def test_batch_norm_folding_keeps_the_outputs(tiny_trained_export_dir: Path) -> None:
    # The trained fixture's trunk has non-trivial BatchNorm statistics and affine weights.
    model = onnx.load(tiny_trained_export_dir / "dpnet.onnx")
    folded = fold_batch_norm(model)
    assert "BatchNormalization" not in {node.op_type for node in folded.graph.node}
    # The support and query passes share their convolutions' folded weights.
    assert folded.ByteSize() < 1.05 * model.ByteSize()
    feed = _black_feeds()[0]
    rng = np.random.default_rng(0)
    feed[contract.QUERY_IMAGE] = rng.standard_normal((1, 3, SIZE, SIZE), dtype=np.float32)
    outputs = [
        ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            [contract.LOGITS], feed
        )[0]
        for m in (model, folded)
    ]
    np.testing.assert_allclose(outputs[1], outputs[0], rtol=1e-3, atol=1e-3)
    check_graph(folded, "folded")


def test_calibration_options_fail_early_with_one_clear_message(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="--calib-episodes must be at least 1, got 0"):
        check_calibration_options(CalibrationOptions(episodes=0))
    with pytest.raises(InputError, match="--calib-method must be one of minmax, percentile"):
        check_calibration_options(CalibrationOptions(method="entropy"))
    with pytest.raises(InputError, match="pascal episodes, which need --data-root"):
        check_calibration_options(CalibrationOptions(dataset="pascal"))
    with pytest.raises(DatasetError, match=f"PASCAL-5i root {tmp_path} lacks JPEGImages"):
        load_calibration_set(
            CalibrationOptions(dataset="pascal", root=tmp_path), size=SIZE, raw_input=False
        )
    with pytest.raises(InputError, match="no calibration episode"):
        float32_to_int8(onnx.ModelProto(), [])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--precision", "int8", "--calib-dataset", "coco"], "which need --data-root"),
        (["--precision", "int8", "--calib-episodes", "0"], "--calib-episodes must be at least 1"),
        (["--calib-dataset", "pascal"], "calibrate int8: add --precision int8"),
        (["--precision", "int8", "--calib-method", "kl"], "--calib-method must be one of minmax"),
        (["--precision", "int4"], "--precision int4 is not one of fp16, int8"),
        (
            ["--no-int8-ccm"],
            "--no-int8-ccm chooses the CCM of the INT8 copies: add --precision int8",
        ),
    ],
)
def test_cli_calibration_errors_are_one_line(
    export_cli, tiny_checkpoint: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    completed = export_cli("onnx", "--ckpt", str(tiny_checkpoint), "--out", str(tmp_path), *args)
    assert completed.returncode == EXIT_USAGE, completed.stderr
    assert completed.stderr.startswith("error: ") and message in completed.stderr
    assert completed.stderr.count("\n") == 1 and "Traceback" not in completed.stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_cli_calibrates_on_a_folder_of_your_own_images(
    export_cli, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    write_folder_dataset(tmp_path / "mine", images=3)
    calibrate = ["--precision", "int8", "--calib-dataset", "folder", "--calib-episodes", "4"]
    out = tmp_path / "out"
    args = ["onnx", "--ckpt", str(tiny_checkpoint), "--out", str(out), *calibrate]
    done = export_cli(*args, "--data-root", str(tmp_path / "mine"))
    assert done.returncode == 0, done.stderr
    for fmt in (contract.FORMATS["ort-int8"], contract.FORMATS["trt-int8"]):
        for role in contract.GRAPHS:
            model = onnx.load(out / fmt.onnx_name(role), load_external_data=False)
            properties = {prop.key: prop.value for prop in model.metadata_props}
            described = json.loads(properties[contract.META_CALIBRATION])
            assert (described["dataset"], described["episodes"]) == ("folder", 4), described
    episode = build_dataset(
        "folder", root=tmp_path / "mine", fold=0, split="val", shots=1, seed=0, episodes=1
    )[0]
    pair = (episode.support_images, episode.support_masks, episode.query_image)
    with (
        Predictor.open(out, precision="int8") as int8,
        Predictor.open(out, precision="fp32") as fp32,
    ):
        assert (int8.precision, fp32.precision) == ("int8", "fp32")  # what the files record
        result, reference = int8.run_episode(*pair), fp32.run_episode(*pair)
    assert result.mask.shape == episode.query_mask.shape
    # Calibrated on the folder's images, the INT8 graphs follow the FP32 ones: the logits move
    # together and the masks mostly agree (the tiny model is random, so not bit for bit).
    correlation = np.corrcoef(result.logits.ravel(), reference.logits.ravel())[0, 1]
    agreement = float((result.mask == reference.mask).mean())
    assert correlation > 0.99 and agreement > 0.9, (correlation, agreement)  # measured 0.99999, 1.0
    # A class with fewer than K + 1 images: one line, and the export above left as it was.
    write_folder_dataset(tmp_path / "small", images=1)
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    small = export_cli(*args, "--data-root", str(tmp_path / "small"))
    assert small.returncode == EXIT_USER_ERROR and small.stderr.count("\n") == 1, small.stderr
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before


def test_quantizer_failure_is_an_export_error(tmp_path: Path) -> None:
    broken = onnx.helper.make_model(
        onnx.helper.make_graph(
            [onnx.helper.make_node("Conv", ["x", "missing_weight"], ["y"], name="conv")],
            "g",
            [onnx.helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
            [onnx.helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        )
    )
    with pytest.raises(ExportError, match="quantizer failed"):
        float32_to_int8(broken, [{"x": np.zeros((1, 1, 4, 4), np.float32)}])
