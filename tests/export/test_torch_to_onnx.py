"""export_onnx: ONNX Runtime vs PyTorch parity, the split pair, op rules, metadata, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from dpnet.checkpoint import load_model
from dpnet_export.lint import lint_onnx
from dpnet_export.onnx_to_fp16 import CCM_SCOPE, nodes_in_scope
from dpnet_export.op_rules import CCM_ALLOWED_OPS, FORBIDDEN_OPS
from dpnet_export.torch_to_onnx import ExportOptions, check_graph, export_onnx
from dpnet_runtime import contract
from dpnet_runtime.contract import GRAPHS as GRAPHS_SPEC
from dpnet_runtime.errors import ExportError, InputError, ModelFileError
from dpnet_runtime.fileio import sha256_file

SIZE = 129
GRAPHS = ("dpnet.onnx", "dpnet_support.onnx", "dpnet_query.onnx")
FP16_GRAPHS = ("dpnet_fp16.onnx", "dpnet_support_fp16.onnx", "dpnet_query_fp16.onnx")
# The op rules as docs/export/index.md states them: what the exported CCM is made of, and what no
# graph may contain (MatMulInteger: the similarity of the ONNX Runtime INT8 graph).
PINNED_CCM_OPS = {
    "MatMul", "ArgMax", "GatherElements", "Gather", "Equal", "Greater", "And", "Cast", "Unsqueeze",
    "MatMulInteger",
}  # fmt: skip
PINNED_FORBIDDEN_OPS = {
    "Loop", "If", "Scan", "NonZero", "Compress", "Unique", "NonMaxSuppression", "TopK",
    "Scatter", "ScatterND", "ScatterElements",
}  # fmt: skip
CHECKPOINTS = [
    ("tiny_checkpoint", "tiny_export_dir"),
    ("tiny_trained_checkpoint", "tiny_trained_export_dir"),
]


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _episode(batch: int, shots: int, seed: int) -> dict[str, np.ndarray]:
    """Random normalised images with blob-shaped support masks (some 255 ignore)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    centres = rng.uniform(30, 100, size=(batch, shots, 2, 1, 1))
    radii = rng.uniform(15, 40, size=(batch, shots, 1, 1))
    masks = ((yy - centres[:, :, 0]) ** 2 + (xx - centres[:, :, 1]) ** 2 < radii**2).astype(
        np.float32
    )
    masks[..., :3, :] = 255.0
    return {
        contract.SUPPORT_IMAGES: rng.standard_normal(
            (batch, shots, 3, SIZE, SIZE), dtype=np.float32
        ),
        contract.SUPPORT_MASKS: masks,
        contract.QUERY_IMAGE: rng.standard_normal((batch, 3, SIZE, SIZE), dtype=np.float32),
    }


@torch.no_grad()
def _torch_outputs(checkpoint: Path, feed: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    model, _ = load_model(checkpoint)
    cache = model.encode_support(
        torch.from_numpy(feed[contract.SUPPORT_IMAGES]),
        torch.from_numpy(feed[contract.SUPPORT_MASKS]),
    )
    output = model.segment(
        torch.from_numpy(feed[contract.QUERY_IMAGE]), cache, model.config.beta_test
    )
    assert output.selected is not None
    return output.logits.numpy(), output.selected.numpy().astype(np.uint8)


def _run(path: Path, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = _session(path)
    outputs = session.run(None, feed)
    return dict(zip([o.name for o in session.get_outputs()], outputs, strict=True))


@pytest.mark.slow
@pytest.mark.parametrize(("checkpoint_fixture", "export_fixture"), CHECKPOINTS)
def test_episode_graph_and_split_pair_match_torch(checkpoint_fixture, export_fixture, request):
    checkpoint: Path = request.getfixturevalue(checkpoint_fixture)
    export_dir: Path = request.getfixturevalue(export_fixture)
    for batch, shots in [(1, 1), (2, 1), (1, 5), (2, 5)]:
        feed = _episode(batch, shots, seed=batch * 10 + shots)
        logits, selected = _torch_outputs(checkpoint, feed)
        got = _run(export_dir / "dpnet.onnx", feed)
        where = f"B={batch} K={shots}"
        assert np.abs(got[contract.LOGITS] - logits).max() <= 1e-3, where
        np.testing.assert_array_equal(got[contract.CONFIDENCE], selected, err_msg=where)
        assert selected.any(), f"{where}: empty C' tests nothing"
        agreement = np.mean(got[contract.MASK] == logits.argmax(axis=1))
        assert agreement >= 0.999, where
        np.testing.assert_array_equal(got[contract.PSEUDO_COUNT], selected.sum(axis=(1, 2, 3)))
        cache = _run(
            export_dir / "dpnet_support.onnx",
            {k: feed[k] for k in ("support_images", "support_masks")},
        )
        split = _run(
            export_dir / "dpnet_query.onnx",
            {contract.QUERY_IMAGE: feed[contract.QUERY_IMAGE], **cache},
        )
        np.testing.assert_allclose(
            split[contract.LOGITS], got[contract.LOGITS], atol=1e-5, err_msg=where
        )
        for name in (contract.MASK, contract.PSEUDO_COUNT, contract.CONFIDENCE):
            np.testing.assert_array_equal(split[name], got[name], err_msg=f"{where} {name}")


@pytest.mark.slow
@pytest.mark.parametrize("export_fixture", ["tiny_export_dir", "small_raw_export"])
def test_graphs_follow_op_rules_and_pass_lint(export_fixture: str, request) -> None:
    folder: Path = request.getfixturevalue(export_fixture)  # float and --raw-input, with FP16
    for name in (*GRAPHS, *FP16_GRAPHS):
        model = onnx.load(folder / name)
        ops = {node.op_type for node in model.graph.node}
        assert not ops & PINNED_FORBIDDEN_OPS, name
        ccm_ops = {node.op_type for node in nodes_in_scope(model, CCM_SCOPE)}
        # Exactly the docs' list: a new CCM op must be added there and to the allowed list.
        float_ccm_ops = PINNED_CCM_OPS - {"MatMulInteger"}  # MatMulInteger: INT8 graphs only
        assert ccm_ops == (set() if name.startswith("dpnet_support") else float_ccm_ops), name
        report = lint_onnx(model)
        assert report.passed, f"{name}: {[f.message for f in report.errors]}"


def test_op_rules_are_the_pinned_lists() -> None:
    assert CCM_ALLOWED_OPS == PINNED_CCM_OPS
    assert set(FORBIDDEN_OPS) == PINNED_FORBIDDEN_OPS


def _one_node_graph(op: str, scope: str = "", **attributes: object) -> onnx.ModelProto:
    """``y = op(x, ...)`` on float [4], with the constant inputs ``op`` needs; optionally the
    ``pkg.torch.onnx.name_scopes`` metadata torch.onnx writes for a node of module ``scope``."""
    h = onnx.helper
    extra = {
        "TopK": [np.array([1], np.int64)],
        "Compress": [np.array([True, False, True, True])],
        "ScatterElements": [np.array([0], np.int64), np.array([1.0], np.float32)],
    }.get(op, [])
    constants = [onnx.numpy_helper.from_array(v, f"c{i}") for i, v in enumerate(extra)]
    f32, i64 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT64
    outputs = {
        "TopK": [("y", f32, [1]), ("indices", i64, [1])],
        "NonZero": [("y", i64, [1, "n"])],
        "Cast": [("y", attributes.get("to", f32), [4])],
    }.get(op, [("y", f32, ["n"] if op in ("Unique", "Compress") else [4])])
    names = [name for name, _, _ in outputs]
    node = h.make_node(op, ["x", *(c.name for c in constants)], names, name="n", **attributes)
    if scope:
        value = f"['', 'model', {scope!r}, 'n']"
        node.metadata_props.add(key="pkg.torch.onnx.name_scopes", value=value)
    graph = h.make_graph(
        [node], "g", [h.make_tensor_value_info("x", f32, [4])],
        [h.make_tensor_value_info(*output) for output in outputs], constants,
    )  # fmt: skip
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 18)])


@pytest.mark.parametrize("op", ["TopK", "NonZero", "Unique", "Compress", "ScatterElements"])
def test_forbidden_op_is_refused_by_the_exporter_and_the_lint(op: str) -> None:
    model = _one_node_graph(op)
    with pytest.raises(ExportError, match=rf"forbidden ops \['{op}'\]"):
        check_graph(model, "g.onnx")
    assert [f.message for f in lint_onnx(model).errors if f.op_type == op] == [
        f"{op} is forbidden: {FORBIDDEN_OPS[op]}"
    ]


def test_ccm_ops_outside_the_list_are_refused_by_the_exporter() -> None:
    check_graph(_one_node_graph("Cast", "model.ccm", to=onnx.TensorProto.FLOAT16), "g.onnx")
    check_graph(_one_node_graph("Sigmoid", "model.pim"), "g.onnx")  # outside the CCM: allowed
    with pytest.raises(ExportError, match=r"CCM ops outside the allowed list \['Sigmoid'\]"):
        check_graph(_one_node_graph("Sigmoid", "model.ccm"), "g.onnx")


@pytest.mark.slow
def test_io_and_metadata_follow_contract(tiny_export_dir, tiny_checkpoint):
    side = contract.feature_size(SIZE)
    expected_outputs = {
        contract.LOGITS: (onnx.TensorProto.FLOAT, ["B", 2, SIZE, SIZE]),
        contract.MASK: (onnx.TensorProto.UINT8, ["B", SIZE, SIZE]),
        contract.PSEUDO_COUNT: (onnx.TensorProto.INT32, ["B"]),
        contract.CONFIDENCE: (onnx.TensorProto.UINT8, ["B", "K", side, side]),
    }
    model = onnx.load(tiny_export_dir / "dpnet.onnx")
    inputs = {v.name: _type(v) for v in model.graph.input}
    assert inputs == {
        contract.SUPPORT_IMAGES: (onnx.TensorProto.FLOAT, ["B", "K", 3, SIZE, SIZE]),
        contract.SUPPORT_MASKS: (onnx.TensorProto.FLOAT, ["B", "K", SIZE, SIZE]),
        contract.QUERY_IMAGE: (onnx.TensorProto.FLOAT, ["B", 3, SIZE, SIZE]),
    }
    assert {v.name: _type(v) for v in model.graph.output} == expected_outputs
    _, checkpoint = load_model(tiny_checkpoint)
    for name, fp16_name, kind in zip(
        GRAPHS, FP16_GRAPHS, ("episode", "support", "query"), strict=True
    ):
        for precision, file in (("fp32", name), ("fp16", fp16_name)):
            model = onnx.load(tiny_export_dir / file)
            meta = {p.key: p.value for p in model.metadata_props}
            assert meta[contract.META_GRAPH] == kind
            assert meta[contract.META_PRECISION] == precision
            assert json.loads(meta[contract.META_INPUTS]) == [v.name for v in model.graph.input]
            assert json.loads(meta[contract.META_OUTPUTS]) == [v.name for v in model.graph.output]
            assert meta[contract.META_CHECKPOINT_SHA256] == sha256_file(tiny_checkpoint)
            assert json.loads(meta[contract.META_CONFIG]) == checkpoint.config.to_dict()
            assert int(meta[contract.META_INPUT_SIZE]) == SIZE
            assert int(meta[contract.META_MAX_SHOTS]) == 5
            assert float(meta[contract.META_BETA]) == checkpoint.config.beta_test
            assert json.loads(meta[contract.META_MEAN]) == list(contract.IMAGENET_MEAN)
            assert json.loads(meta[contract.META_RAW_INPUT]) is False
            assert int(meta[contract.META_OPSET]) == 18
            assert meta[contract.META_DPNET_VERSION]
            assert {v.name: _type(v) for v in model.graph.input}.keys() == set(
                json.loads(meta[contract.META_INPUTS])
            )
            for value in (*model.graph.input, *model.graph.output):  # FP16 copies keep FP32 I/O
                assert value.type.tensor_type.elem_type != onnx.TensorProto.FLOAT16
            # Every dynamic axis carries the contract's name (B, K), as TensorRT reports it.
            channels = checkpoint.config.feature_channels
            specs = GRAPHS_SPEC[kind].bind(size=SIZE, channels=channels)
            for bound, values in zip(specs, (model.graph.input, model.graph.output), strict=True):
                assert {v.name: _type(v)[1] for v in values} == {
                    name: list(spec.shape) for name, spec in bound.items()
                }, file


def _type(value: onnx.ValueInfoProto) -> tuple[int, list[int | str]]:
    tensor = value.type.tensor_type
    dims = [d.dim_param or d.dim_value for d in tensor.shape.dim]
    return tensor.elem_type, dims


def test_missing_checkpoint_is_model_file_error(tmp_path):
    out_dir = tmp_path / "out"
    with pytest.raises(ModelFileError, match="does not exist"):
        export_onnx(tmp_path / "missing.pt", out_dir)
    assert not out_dir.exists()


def test_non_checkpoint_file_is_model_file_error(tmp_path):
    bogus = tmp_path / "model.pt"
    bogus.write_bytes(b"not a checkpoint at all")
    out_dir = tmp_path / "out"
    with pytest.raises(ModelFileError, match="not a PyTorch file"):
        export_onnx(bogus, out_dir)
    assert not out_dir.exists()


def test_unwritable_output_is_input_error(tmp_path, tiny_checkpoint):
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(InputError, match="not a folder"):
        export_onnx(tiny_checkpoint, blocker / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


@pytest.mark.parametrize(
    ("options", "match"),
    [
        (ExportOptions(max_shots=0), "max-shots"),
        (ExportOptions(beta=1.5), "beta"),
        (ExportOptions(opset=13), "opset"),
    ],
)
def test_invalid_options_are_input_errors(tmp_path, tiny_checkpoint, options, match):
    with pytest.raises(InputError, match=match):
        export_onnx(tiny_checkpoint, tmp_path / "out", options)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_failed_write_leaves_no_partial_file(tmp_path, tiny_checkpoint):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "dpnet_query.onnx").mkdir()  # the last graph cannot replace a folder
    with pytest.raises(Exception, match="cannot write"):
        export_onnx(tiny_checkpoint, out_dir, ExportOptions(max_shots=2))
    assert [p.name for p in out_dir.iterdir()] == ["dpnet_query.onnx"]
