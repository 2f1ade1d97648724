"""The TensorRT lint (`dpnet-export check`) on small hand-built ONNX graphs."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from dpnet_export.lint import lint_onnx, load_operator_table
from dpnet_runtime import contract
from dpnet_runtime.console import EXIT_CHECK_FAILED, EXIT_USER_ERROR
from dpnet_runtime.errors import InputError, ModelFileError

F32 = TensorProto.FLOAT


def _model(
    nodes: list[onnx.NodeProto],
    *,
    inputs: list[onnx.ValueInfoProto] | None = None,
    outputs: list[onnx.ValueInfoProto] | None = None,
    initializers: list[onnx.TensorProto] | None = None,
) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        inputs or [helper.make_tensor_value_info("x", F32, ["B", 3, 4, 4])],
        outputs or [helper.make_tensor_value_info("y", F32, None)],
        initializer=initializers or [],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _axes(name: str, values: list[int]) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(values, dtype=np.int64), name)


def _clean_model() -> onnx.ModelProto:
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("ReduceSum", ["r", "axes"], ["s"], name="sum", keepdims=0),
        helper.make_node("Constant", [], ["uaxes"], name="c", value=_axes("v", [1])),
        helper.make_node("Unsqueeze", ["s", "uaxes"], ["y"], name="unsq"),
    ]
    return _model(nodes, initializers=[_axes("axes", [2, 3])])


def _errors(model: onnx.ModelProto) -> list[str]:
    return [f"{f.op_type}: {f.message}" for f in lint_onnx(model).errors]


def test_operator_table_is_packaged_with_its_source() -> None:
    table = load_operator_table()
    assert table["source"]["repository"] == "onnx/onnx-tensorrt"
    assert table["operators"]["MatMul"]["supported"] is True


def test_clean_graph_passes() -> None:
    report = lint_onnx(_clean_model())
    assert report.passed, report.errors
    assert report.node_count == 4
    assert report.table_version == "10.15"


@pytest.mark.parametrize(
    ("op", "inputs"),
    [
        ("NonZero", ["x"]),
        ("TopK", ["x", "k"]),
        ("Compress", ["x", "cond"]),
        ("ScatterND", ["x", "idx", "x"]),
        ("ScatterElements", ["x", "idx", "x"]),
    ],
)
def test_forbidden_ops_are_errors(op: str, inputs: list[str]) -> None:
    nodes = [helper.make_node(op, inputs, ["y"], name="bad")]
    inits = [_axes("k", [1]), _axes("idx", [0]), numpy_helper.from_array(np.ones(3, bool), "cond")]
    errors = _errors(_model(nodes, initializers=inits))
    assert any(e.startswith(f"{op}:") for e in errors), errors


def test_loop_is_an_error() -> None:
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"], name="id")],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, [])],
    )
    loop = helper.make_node("Loop", ["trip", "cond"], [], name="loop", body=body)
    nodes = [loop, helper.make_node("Relu", ["x"], ["y"], name="relu")]
    inits = [_axes("trip", [3]), numpy_helper.from_array(np.array(True), "cond")]
    report = lint_onnx(_model(nodes, initializers=inits))
    assert any(f.op_type == "Loop" and f.node == "loop" for f in report.errors)
    assert report.node_count == 3  # the body's Identity is walked too


def test_int64_and_bool_graph_io_are_errors() -> None:
    model = _model(
        [helper.make_node("Cast", ["x"], ["y"], name="cast", to=TensorProto.BOOL)],
        inputs=[helper.make_tensor_value_info("x", TensorProto.INT64, [2])],
        outputs=[helper.make_tensor_value_info("y", TensorProto.BOOL, [2])],
    )
    errors = lint_onnx(model).errors
    assert {(f.node, "INT64" in f.message, "BOOL" in f.message) for f in errors} == {
        ("x", True, False),
        ("y", False, True),
    }


def test_computed_reduce_axes_are_an_error() -> None:
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"], name="shape"),
        helper.make_node("Gather", ["shape", "one"], ["axes"], name="pick"),
        helper.make_node("ReduceSum", ["x", "axes"], ["y"], name="sum"),
    ]
    errors = _errors(_model(nodes, initializers=[_axes("one", [1])]))
    assert errors == [
        "ReduceSum: ReduceSum axes come from computed tensor 'axes'; TensorRT needs "
        "them at build time: make them an initializer or Constant"
    ]


def test_computed_unsqueeze_axes_are_an_error() -> None:
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"], name="shape"),
        helper.make_node("Slice", ["shape", "zero", "one"], ["axes"], name="slice"),
        helper.make_node("Unsqueeze", ["x", "axes"], ["y"], name="unsq"),
    ]
    errors = _errors(_model(nodes, initializers=[_axes("zero", [0]), _axes("one", [1])]))
    assert len(errors) == 1 and errors[0].startswith("Unsqueeze:")


def test_uint8_only_allowed_at_the_boundary() -> None:
    boundary = _model(
        [helper.make_node("Cast", ["x"], ["y"], name="to_u8", to=TensorProto.UINT8)],
        outputs=[helper.make_tensor_value_info("y", TensorProto.UINT8, None)],
    )
    assert lint_onnx(boundary).passed
    inner = _model(
        [
            helper.make_node("Cast", ["x"], ["u"], name="to_u8", to=TensorProto.UINT8),
            helper.make_node("Cast", ["u"], ["y"], name="back", to=F32),
        ]
    )
    assert _errors(inner) == [
        "Cast: intermediate tensor 'u' is UINT8: TensorRT accepts UINT8 only as graph input or "
        "output; compute in int32 or float"
    ]


def test_unsupported_and_custom_ops_are_errors() -> None:
    nodes = [
        helper.make_node("Det", ["x"], ["d"], name="det"),
        helper.make_node("Swish", ["d"], ["s"], name="swish"),
        helper.make_node("MyOp", ["s"], ["y"], name="mine", domain="com.example"),
    ]
    errors = _errors(_model(nodes))
    assert [e.split(":")[0] for e in errors] == ["Det", "Swish", "MyOp"]
    assert "not supported" in errors[0] and "no row" in errors[1] and "plugin" in errors[2]


def test_restrictions_are_one_warning_per_op_type() -> None:
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    nodes = [
        helper.make_node("Resize", ["x", "", "scales"], ["r"], name="up1", mode="linear"),
        helper.make_node("Resize", ["r", "", "scales"], ["y"], name="up2", mode="linear"),
    ]
    report = lint_onnx(_model(nodes, initializers=[scales]))
    assert report.passed
    assert [(f.node, f.op_type) for f in report.warnings] == [("up1", "Resize")]
    assert report.warnings[0].message.startswith("2 node(s); TensorRT restriction:")


def test_non_onnx_file_is_a_model_file_error(tmp_path: Path) -> None:
    bad = tmp_path / "junk.onnx"
    bad.write_bytes(b"\x00\xffthis is not a protobuf" * 10)
    with pytest.raises(ModelFileError, match=r"junk\.onnx"):
        lint_onnx(bad)
    with pytest.raises(ModelFileError, match="does not exist"):
        lint_onnx(tmp_path / "missing.onnx")


@pytest.mark.slow
def test_check_cli_exit_codes(
    tmp_path: Path, export_cli: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    clean = tmp_path / "clean.onnx"
    onnx.save(_clean_model(), clean)
    bad = tmp_path / "bad.onnx"
    onnx.save(_model([helper.make_node("NonZero", ["x"], ["y"], name="nz")]), bad)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not onnx at all")

    ok = export_cli("check", str(clean), "--json", "-")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["passed"] is True
    report = tmp_path / "lint.json"
    written = export_cli("check", str(clean), "--json", str(report))
    assert written.returncode == 0, written.stderr
    assert "passed: " in written.stdout  # the table, and the JSON in the file
    assert json.loads(report.read_text()) == json.loads(ok.stdout)

    failed = export_cli("check", str(bad))
    assert failed.returncode == EXIT_CHECK_FAILED, failed.stderr
    assert "NonZero" in failed.stdout and "failed" in failed.stdout

    broken = export_cli("check", str(junk))
    assert broken.returncode == EXIT_USER_ERROR
    assert broken.stderr.count("\n") == 1 and "junk.onnx" in broken.stderr


def test_data_type_outside_the_table_is_a_warning() -> None:
    nodes = [
        helper.make_node("Cast", ["x"], ["i"], name="to_int", to=TensorProto.INT32),
        helper.make_node("Sigmoid", ["i"], ["s"], name="sig"),
        helper.make_node("Cast", ["s"], ["y"], name="back", to=F32),
    ]
    report = lint_onnx(_model(nodes))
    assert report.passed
    assert [(f.op_type, "INT32" in f.message) for f in report.warnings] == [("Sigmoid", True)]


def _axes_constant(name: str, values: list[int]) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], name=f"const_{name}", value=_axes("v", values))


# Axes that resolve to a constant at build time, each way a parser can resolve them.
_RESOLVABLE_AXES = {
    "identity of a Constant": [
        _axes_constant("c", [1]),
        helper.make_node("Identity", ["c"], ["axes"], name="id"),
    ],
    "cast of an initializer": [helper.make_node("Cast", ["init"], ["axes"], name="cast", to=7)],
    "concat of constants": [
        _axes_constant("c", [1]),
        helper.make_node("Concat", ["c", "init"], ["cat"], name="cat", axis=0),
        helper.make_node("Slice", ["cat", "zero", "one"], ["axes"], name="first"),
    ],
    "shape of a static tensor": [
        helper.make_node("Shape", ["w"], ["shape"], name="shape"),
        helper.make_node("Slice", ["shape", "zero", "one"], ["axes"], name="first"),
    ],
}


@pytest.mark.parametrize("op", ["Squeeze", "Unsqueeze"])
@pytest.mark.parametrize("how", sorted(_RESOLVABLE_AXES))
def test_squeeze_axes_that_resolve_to_a_constant_pass(op: str, how: str) -> None:
    # The upstream table accepts axes that resolve to a build-time constant, not only
    # initializers: the lint must not report what the parser takes.
    restriction = load_operator_table()["operators"][op]["restrictions"]
    assert "resolve to a build-time constant" in restriction
    weights = numpy_helper.from_array(np.zeros((1, 3), np.float32), "w")
    data = "x" if op == "Unsqueeze" else "x1"
    nodes = [*_RESOLVABLE_AXES[how], helper.make_node(op, [data, "axes"], ["y"], name="op")]
    inputs = [helper.make_tensor_value_info(data, F32, [1, 3, 4, 4])]
    inits = [_axes("init", [1]), _axes("zero", [0]), _axes("one", [1]), weights]
    errors = _errors(_model(nodes, inputs=inputs, initializers=inits))
    assert errors == []


def test_reduce_axes_stay_initializer_or_constant_as_the_table_says() -> None:
    assert (
        "must be an initializer" in load_operator_table()["operators"]["ReduceSum"]["restrictions"]
    )
    nodes = [
        _axes_constant("c", [1]),
        helper.make_node("Identity", ["c"], ["axes"], name="id"),
        helper.make_node("ReduceSum", ["x", "axes"], ["y"], name="sum"),
    ]
    assert [e.split(":")[0] for e in _errors(_model(nodes))] == ["ReduceSum"]


def test_axes_from_a_dynamic_shape_or_random_op_do_not_resolve() -> None:
    nodes = [
        helper.make_node("RandomUniform", [], ["r"], name="rand", shape=[1]),
        helper.make_node("Cast", ["r"], ["axes"], name="cast", to=7),
        helper.make_node("Unsqueeze", ["x", "axes"], ["y"], name="unsq"),
    ]
    assert [e.split(":")[0] for e in _errors(_model(nodes))] == ["Unsqueeze"]


def _pool(op: str, side: int | str, **attrs: object) -> onnx.ModelProto:
    node = helper.make_node(op, ["x"], ["y"], name="pool", kernel_shape=[4, 4], **attrs)
    inputs = [helper.make_tensor_value_info("x", F32, [1, 8, side, side])]
    return _model([node], inputs=inputs)


def test_ceil_mode_average_pool_with_partial_windows_is_an_error() -> None:
    # 17 = 4 * 4 + 1: the last window holds one column of four; its divisor is disputed.
    report = lint_onnx(_pool("AveragePool", 17, strides=[4, 4], ceil_mode=1))
    assert [(f.op_type, f.severity) for f in report.errors] == [("AveragePool", "error")]
    assert "partial last window on spatial axes [0, 1]" in report.errors[0].message


@pytest.mark.parametrize(
    ("model", "severities"),
    [
        (_pool("AveragePool", 16, strides=[4, 4], ceil_mode=1), []),  # every window full
        (_pool("AveragePool", 17, strides=[4, 4]), []),  # floor mode drops the rest
        (_pool("MaxPool", 17, strides=[4, 4], ceil_mode=1), ["warning"]),  # max has no divisor
        (_pool("AveragePool", "S", strides=[4, 4], ceil_mode=1), ["warning"]),  # unknown size
        # 18 + 2 pads = 20, windows at 0..16 with stride 4: full.
        (_pool("AveragePool", 18, strides=[4, 4], pads=[1, 1, 1, 1], ceil_mode=1), []),
    ],
)
def test_ceil_mode_pooling_findings(model: onnx.ModelProto, severities: list[str]) -> None:
    findings = [f for f in lint_onnx(model).findings if "ceil_mode" in f.message]
    assert [f.severity for f in findings] == severities


def _u8s8_model(target: str | None) -> onnx.ModelProto:
    """x -> QuantizeLinear (uint8, zero point 128) -> DequantizeLinear -> Relu: ONNX Runtime's
    asymmetric activations, which TensorRT refuses."""
    f32 = onnx.TensorProto.FLOAT
    inits = [
        onnx.numpy_helper.from_array(np.array(0.05, np.float32), "scale"),
        onnx.numpy_helper.from_array(np.array(128, np.uint8), "zero_point"),
    ]
    nodes = [
        onnx.helper.make_node("QuantizeLinear", ["x", "scale", "zero_point"], ["q"], name="q"),
        onnx.helper.make_node("DequantizeLinear", ["q", "scale", "zero_point"], ["d"], name="d"),
        onnx.helper.make_node("Relu", ["d"], ["y"], name="relu"),
    ]
    graph = onnx.helper.make_graph(
        nodes, "g", [onnx.helper.make_tensor_value_info("x", f32, [1, 4])],
        [onnx.helper.make_tensor_value_info("y", f32, [1, 4])], initializer=inits,
    )  # fmt: skip
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)])
    if target is not None:
        onnx.helper.set_model_props(model, {contract.META_INT8_TARGET: target})
    return model


def test_an_onnx_runtime_graph_is_not_held_to_tensorrt_qdq_rules_and_says_so() -> None:
    trt = lint_onnx(_u8s8_model(None))  # no target recorded: a TensorRT source, every rule
    assert trt.target == "trt" and not trt.passed
    assert any("zero point" in f.message or "UINT8" in f.message for f in trt.errors)
    ort = lint_onnx(_u8s8_model("ort"))  # the exporter's int8_target metadata
    assert ort.target == "ort" and ort.passed, ort.errors
    notes = [f.message for f in ort.findings if f.severity == "info"]
    assert any("TensorRT's Q/DQ and intermediate-UINT8 rules are not applied" in n for n in notes)
    assert not lint_onnx(_u8s8_model("ort"), "trt").passed  # --target trt overrides
    with pytest.raises(InputError, match="lint target must be one of trt, ort"):
        lint_onnx(_u8s8_model(None), "tflite")


def test_an_op_tensorrt_lacks_is_an_error_for_trt_and_a_note_for_onnx_runtime() -> None:
    # The ONNX Runtime INT8 graph's similarity is a MatMulInteger, which TensorRT cannot parse.
    nodes = [helper.make_node("Det", ["x"], ["y"], name="det")]
    model = _model(nodes)
    assert [e.split(":")[0] for e in _errors(model)] == ["Det"]
    ort = lint_onnx(model, "ort")
    assert ort.passed, ort.errors
    notes = [f.message for f in ort.findings if f.severity == "info" and f.node == "det"]
    assert notes == ["Det is not supported by the TensorRT parser"]
