"""`dpnet-export check` on INT8 Q/DQ graphs: TensorRT's symmetric, per-channel-on-weights rules."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from dpnet_export.lint import lint_onnx

F32 = TensorProto.FLOAT


def _array(name: str, values: object, dtype: type) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(values, dtype=dtype), name)


def _conv_model(
    *,
    act_zero_point: onnx.TensorProto | None = None,
    act_scale: onnx.TensorProto | None = None,
    weight_axis: int = 0,
    weight_pair: bool = False,
    int32_bias: bool = False,
    computed_scale: bool = False,
) -> onnx.ModelProto:
    """x -> Q -> DQ -> Conv(W) with W an INT8 initializer behind a DQ (or FP32 W behind a Q/DQ
    pair); every default is what TensorRT accepts."""
    weight = np.arange(2 * 3 * 1 * 1, dtype=np.float32).reshape(2, 3, 1, 1) - 2.5
    inits = [
        act_scale or _array("x_scale", 0.05, np.float32),
        act_zero_point or _array("x_zero_point", 0, np.int8),
        _array("w_scale", [0.02, 0.03], np.float32),
        _array("w_zero_point", [0, 0], np.int8),
    ]
    nodes = [
        helper.make_node(
            "QuantizeLinear", ["x", "x_scale", "x_zero_point"], ["xq"], name="x_quantize"
        ),
        helper.make_node(
            "DequantizeLinear", ["xq", "x_scale", "x_zero_point"], ["xd"], name="x_dequantize"
        ),
    ]
    if weight_pair:
        inits.append(numpy_helper.from_array(weight, "w"))
        nodes.append(
            helper.make_node(
                "QuantizeLinear", ["w", "w_scale", "w_zero_point"], ["wq"], name="w_quantize",
                axis=weight_axis,
            )
        )  # fmt: skip
    else:
        inits.append(_array("wq", np.round(weight / 0.03), np.int8))
    nodes.append(
        helper.make_node(
            "DequantizeLinear", ["wq", "w_scale", "w_zero_point"], ["wd"], name="w_dequantize",
            axis=weight_axis,
        )
    )  # fmt: skip
    conv_inputs = ["xd", "wd"]
    if int32_bias:
        inits += [_array("b", [10, -4], np.int32), _array("b_scale", [0.001, 0.0015], np.float32)]
        nodes.append(
            helper.make_node("DequantizeLinear", ["b", "b_scale"], ["bd"], name="b_dequantize")
        )
        conv_inputs.append("bd")
    nodes.append(helper.make_node("Conv", conv_inputs, ["y"], name="conv"))
    if computed_scale:
        inits[0] = _array("raw_scale", -0.05, np.float32)
        nodes.insert(0, helper.make_node("Abs", ["raw_scale"], ["x_scale"], name="abs"))
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", F32, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", F32, [1, 2, 4, 4])],
        initializer=inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _qdq_errors(model: onnx.ModelProto) -> list[str]:
    onnx.checker.check_model(model, full_check=True)
    report = lint_onnx(model)
    return [
        f"{f.node}: {f.message}"
        for f in report.errors
        if f.op_type in ("QuantizeLinear", "DequantizeLinear")
    ]


@pytest.mark.parametrize("weight_pair", [False, True], ids=["int8-weights", "qdq-pair"])
def test_symmetric_int8_with_per_channel_weights_passes(weight_pair: bool) -> None:
    report = lint_onnx(_conv_model(weight_pair=weight_pair))
    assert report.passed, report.errors
    # The table's "zero point must be 0" restriction is verified, not repeated as a warning.
    assert not [f for f in report.warnings if f.op_type.endswith("QuantizeLinear")]


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        (
            _conv_model(act_zero_point=_array("x_zero_point", 128, np.uint8)),
            ["x_quantize: intermediate tensor 'xq' is UINT8", "x_quantize: quantizes 'x' to UINT8",
             "x_quantize: zero point 'x_zero_point' is not 0",
             "x_dequantize: quantizes 'xq' to UINT8", "x_dequantize: zero point 'x_zero_point'"],
        ),
        (
            _conv_model(act_zero_point=_array("x_zero_point", 3, np.int8)),
            ["x_quantize: zero point 'x_zero_point' is not 0",
             "x_dequantize: zero point 'x_zero_point' is not 0"],
        ),
        (
            _conv_model(weight_axis=1),
            ["w_dequantize: per-channel axis 1 of weight 'wq'; TensorRT needs the output-channel "
             "axis [0]"],
        ),
        (
            _conv_model(weight_axis=1, weight_pair=True),
            ["w_quantize: per-channel axis 1 of weight 'w'", "w_dequantize: per-channel axis 1"],
        ),
        (
            _conv_model(act_scale=_array("x_scale", [0.05, 0.05, 0.05], np.float32)),
            ["x_quantize: per-channel scales on a tensor that is not the weight input",
             "x_dequantize: per-channel scales on a tensor that is not the weight input"],
        ),
        (
            _conv_model(act_scale=_array("x_scale", -0.05, np.float32)),
            ["x_quantize: scale 'x_scale' must be positive and finite",
             "x_dequantize: scale 'x_scale' must be positive and finite"],
        ),
        (
            _conv_model(computed_scale=True),
            ["x_quantize: scale 'x_scale' is computed",
             "x_dequantize: scale 'x_scale' is computed"],
        ),
        (
            _conv_model(int32_bias=True),
            ["b_dequantize: quantizes 'b' to INT32", "b_dequantize: per-channel scales on a"],
        ),
    ],
    ids=[
        "uint8", "asymmetric-int8", "weight-axis", "pair-axis", "per-channel-activation",
        "negative-scale", "computed-scale", "int32-bias",
    ],
)  # fmt: skip
def test_what_tensorrt_refuses_is_an_error(model: onnx.ModelProto, expected: list[str]) -> None:
    errors = _qdq_errors(model)
    for start in expected:
        assert any(error.startswith(start) for error in errors), (start, errors)
    assert len(errors) == len(expected), errors


def test_missing_zero_point_means_uint8() -> None:
    model = _conv_model()
    for node in model.graph.node[:2]:  # the activation's Q and DQ
        del node.input[2]
    errors = _qdq_errors(model)
    assert errors == [
        "x_quantize: intermediate tensor 'xq' is UINT8: TensorRT accepts UINT8 only as graph "
        "input or output; compute in int32 or float",
        "x_quantize: quantizes 'x' to UINT8: TensorRT takes INT8 (or FP8, FP4, INT4) Q/DQ only, "
        "no UINT8 activations or INT32 biases; lint the TensorRT flavour, *_int8_trt.onnx",
        "x_dequantize: quantizes 'xq' to UINT8: TensorRT takes INT8 (or FP8, FP4, INT4) Q/DQ "
        "only, no UINT8 activations or INT32 biases; lint the TensorRT flavour, *_int8_trt.onnx",
    ]


@pytest.mark.parametrize(
    ("op", "attributes", "axis", "passes"),
    [
        ("MatMul", {}, 1, True),
        ("MatMul", {}, 0, False),
        ("Gemm", {}, 1, True),
        ("Gemm", {"transB": 1}, 0, True),
        ("Gemm", {"transB": 1}, 1, False),
    ],
)
def test_matmul_and_gemm_weights_are_per_channel_on_n(
    op: str, attributes: dict[str, int], axis: int, passes: bool
) -> None:
    shape = (4, 4)  # K = N: only the axis tells the output channels apart
    nodes = [
        helper.make_node(
            "DequantizeLinear", ["wq", "w_scale", "w_zero_point"], ["wd"], name="w_dequantize",
            axis=axis,
        ),
        helper.make_node(op, ["x", "wd"], ["y"], name="product", **attributes),
    ]  # fmt: skip
    inits = [
        _array("wq", np.ones(shape), np.int8),
        _array("w_scale", [0.1, 0.2, 0.3, 0.4], np.float32),
        _array("w_zero_point", [0, 0, 0, 0], np.int8),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", F32, [2, 4])],
        [helper.make_tensor_value_info("y", F32, [2, 4])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    errors = _qdq_errors(model)
    if passes:
        assert errors == []
    else:
        assert len(errors) == 1 and "per-channel axis" in errors[0], errors


def _scores_model(*, quantize: tuple[bool, bool], output_qdq: bool = False) -> onnx.ModelProto:
    """keys a [1,3,4] x keys b [1,4,5] -> scores -> ArgMax over both axes (the CCM similarity),
    with an S8 per-tensor Q/DQ pair on the inputs chosen by ``quantize`` and optionally one
    between the scores and the ArgMax."""
    inits = [_array("scale", 0.01, np.float32), _array("zero", 0, np.int8)]
    nodes, operands = [], []
    for name, quantized in zip(("a", "b"), quantize, strict=True):
        if quantized:
            nodes += [
                helper.make_node("QuantizeLinear", [name, "scale", "zero"], [f"{name}q"],
                                 name=f"{name}_quantize"),
                helper.make_node("DequantizeLinear", [f"{name}q", "scale", "zero"],
                                 [f"{name}d"], name=f"{name}_dequantize"),
            ]  # fmt: skip
        operands.append(f"{name}d" if quantized else name)
    nodes.append(helper.make_node("MatMul", operands, ["scores"], name="similarity"))
    read = "scores"
    if output_qdq:
        nodes += [
            helper.make_node("QuantizeLinear", ["scores", "scale", "zero"], ["sq"], name="s_q"),
            helper.make_node("DequantizeLinear", ["sq", "scale", "zero"], ["sd"], name="s_dq"),
        ]
        read = "sd"
    nodes += [
        helper.make_node("ArgMax", [read], ["forward"], name="forward", axis=-1, keepdims=0),
        helper.make_node("ArgMax", [read], ["backward"], name="backward", axis=-2, keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [
            helper.make_tensor_value_info("a", F32, [1, 3, 4]),
            helper.make_tensor_value_info("b", F32, [1, 4, 5]),
        ],
        [
            helper.make_tensor_value_info("forward", TensorProto.INT64, [1, 3]),
            helper.make_tensor_value_info("backward", TensorProto.INT64, [1, 5]),
        ],
        initializer=inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _similarity_errors(model: onnx.ModelProto) -> list[str]:
    onnx.checker.check_model(model, full_check=True)
    return [f.message for f in lint_onnx(model).errors if f.node == "similarity"]


def test_scores_of_an_argmax_from_two_s8_per_tensor_inputs_pass() -> None:
    assert _similarity_errors(_scores_model(quantize=(True, True))) == []
    assert _similarity_errors(_scores_model(quantize=(False, False))) == []  # a float CCM


@pytest.mark.parametrize("quantize", [(True, False), (False, True)])
def test_scores_of_an_argmax_quantized_on_one_side_are_an_error(
    quantize: tuple[bool, bool],
) -> None:
    errors = _similarity_errors(_scores_model(quantize=quantize))
    assert len(errors) == 1 and "INT8 GEMM only with Q/DQ on both inputs" in errors[0], errors
    assert ("'ad'" if quantize[0] else "'bd'") in errors[0]


def test_a_qdq_between_the_scores_and_their_argmax_is_an_error() -> None:
    errors = _similarity_errors(_scores_model(quantize=(True, True), output_qdq=True))
    assert len(errors) == 1 and "rounds them to 8 bits" in errors[0], errors
