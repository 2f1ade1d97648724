"""Fake DPNet graphs for the runtime tests that need what a real export cannot give, built with
onnx.helper.

The fake graphs follow ``dpnet_runtime.contract`` exactly (names, dtypes, dynamic B and K,
metadata) but replace the network by a colour-prototype segmenter: each shot's prototype is
the mean colour under its mask (object) and outside it (background), the query pixel takes
the nearer prototype's class. So a red square on a blue background is segmented correctly (a
random-weight DPNet segments nothing), image sides can be dynamic (``size="H"``, for
multi-scale; real exports have a fixed side) and metadata can be spoilt at will. Tests that use
them say ``fake`` in their names; every other runtime test drives the real 65 x 65 export of
``tests/conftest.py`` (``small_export``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from dpnet_runtime import contract

OPSET = 18
_BIG = 2**31 - 1

GraphFactory = Callable[..., Path]


def _const(name: str, values: list[int] | list[float], dtype: type = np.int64) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, dtype=dtype), name)


def _support_nodes(images: str, masks: str) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """support_images/masks -> the support cache: cos feats, fg, prototypes (fg and bg colour)."""
    cos_feats, fg, prototypes = contract.GRAPHS[contract.SUPPORT].output_names
    nodes = [
        helper.make_node("Unsqueeze", [masks, "axis2"], ["m"]),
        helper.make_node("Sub", ["one", "m"], ["bgm"]),
        helper.make_node("Mul", [images, "m"], ["fg_px"]),
        helper.make_node("Mul", [images, "bgm"], ["bg_px"]),
        helper.make_node("ReduceSum", ["fg_px", "axes34"], ["fg_sum"], keepdims=0),
        helper.make_node("ReduceSum", ["bg_px", "axes34"], ["bg_sum"], keepdims=0),
        helper.make_node("ReduceSum", ["m", "axes34"], ["fg_n"], keepdims=0),
        helper.make_node("ReduceSum", ["bgm", "axes34"], ["bg_n"], keepdims=0),
        helper.make_node("Add", ["fg_n", "eps"], ["fg_d"]),
        helper.make_node("Add", ["bg_n", "eps"], ["bg_d"]),
        helper.make_node("Div", ["fg_sum", "fg_d"], ["fg_proto"]),
        helper.make_node("Div", ["bg_sum", "bg_d"], ["bg_proto"]),
        helper.make_node("Concat", ["fg_proto", "bg_proto"], [prototypes], axis=2),
        helper.make_node("Slice", [images, "zero2", "big2", "axes34", "step8"], [cos_feats]),
        helper.make_node("Slice", [masks, "zero2", "big2", "axes23", "step8"], [fg]),
    ]
    inits = [
        _const("axis2", [2]),
        _const("axes34", [3, 4]),
        _const("axes23", [2, 3]),
        _const("zero2", [0, 0]),
        _const("big2", [_BIG, _BIG]),
        _const("step8", [8, 8]),
        _const("one", [1.0], np.float32),
        _const("eps", [1e-6], np.float32),
    ]
    return nodes, inits


def _query_nodes(query: str) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """query_image + cache -> logits, mask, pseudo_count, confidence."""
    _, fg, prototypes = contract.GRAPHS[contract.SUPPORT].output_names
    logits, mask, pseudo_count, confidence = contract.GRAPHS[contract.QUERY].output_names
    nodes = [
        helper.make_node("ReduceMean", [prototypes, "axis1"], ["proto"], keepdims=0),
        helper.make_node("Split", ["proto", "split33"], ["fg_mean", "bg_mean"], axis=1),
        helper.make_node("Unsqueeze", ["fg_mean", "axes23"], ["fg_p"]),
        helper.make_node("Unsqueeze", ["bg_mean", "axes23"], ["bg_p"]),
        helper.make_node("Sub", [query, "fg_p"], ["fg_diff"]),
        helper.make_node("Sub", [query, "bg_p"], ["bg_diff"]),
        helper.make_node("Mul", ["fg_diff", "fg_diff"], ["fg_sq"]),
        helper.make_node("Mul", ["bg_diff", "bg_diff"], ["bg_sq"]),
        helper.make_node("ReduceSum", ["fg_sq", "axis1"], ["fg_dist"], keepdims=1),
        helper.make_node("ReduceSum", ["bg_sq", "axis1"], ["bg_dist"], keepdims=1),
        helper.make_node("Neg", ["fg_dist"], ["fg_logit"]),
        helper.make_node("Neg", ["bg_dist"], ["bg_logit"]),
        helper.make_node("Concat", ["bg_logit", "fg_logit"], [logits], axis=1),
        helper.make_node("ArgMax", [logits], ["label"], axis=1, keepdims=0),
        helper.make_node("Cast", ["label"], [mask], to=TensorProto.UINT8),
        helper.make_node("Cast", [fg], [confidence], to=TensorProto.UINT8),
        helper.make_node("ReduceSum", [fg, "axes123"], ["count"], keepdims=0),
        helper.make_node("Cast", ["count"], [pseudo_count], to=TensorProto.INT32),
    ]
    inits = [
        _const("axis1", [1]),
        _const("split33", [3, 3]),
        _const("axes123", [1, 2, 3]),
    ]
    return nodes, inits


def _raw_adapter(
    raw_name: str, name: str, channels_last_rank: int
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """uint8 NHWC image -> normalised float NCHW, inside the graph (--raw-input)."""
    batch_axes = list(range(channels_last_rank - 3))
    perm = [*batch_axes, channels_last_rank - 1, channels_last_rank - 3, channels_last_rank - 2]
    mean = np.asarray(contract.IMAGENET_MEAN, np.float32).reshape(3, 1, 1) * 255
    std = np.asarray(contract.IMAGENET_STD, np.float32).reshape(3, 1, 1) * 255
    nodes = [
        helper.make_node("Cast", [raw_name], [f"{name}_f"], to=TensorProto.FLOAT),
        helper.make_node("Transpose", [f"{name}_f"], [f"{name}_t"], perm=perm),
        helper.make_node("Sub", [f"{name}_t", "raw_mean"], [f"{name}_c"]),
        helper.make_node("Div", [f"{name}_c", "raw_std"], [name]),
    ]
    inits = [numpy_helper.from_array(mean, "raw_mean"), numpy_helper.from_array(std, "raw_std")]
    return nodes, inits


def _value_info(spec: contract.TensorSpec, axes: dict[str, int | str]) -> onnx.ValueInfoProto:
    dtype = helper.np_dtype_to_tensor_dtype(np.dtype(spec.dtype))
    shape = [axes.get(dim, dim) if isinstance(dim, str) else dim for dim in spec.shape]
    return helper.make_tensor_value_info(spec.name, dtype, shape)


def build_graph(
    role: str, *, size: int | str, max_shots: int, raw: bool, metadata: dict[str, str]
) -> onnx.ModelProto:
    """One contract graph: ``role`` in episode / support / query; ``size`` int or "H" (dynamic)."""
    side = size
    feat: int | str = contract.feature_size(size) if isinstance(size, int) else "h"
    f32 = TensorProto.FLOAT
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    images_in, masks_in = contract.GRAPHS[contract.SUPPORT].input_names
    query_in = contract.GRAPHS[contract.QUERY].input_names[0]
    support_images, support_masks, query = "support_f", "masks_f", "query_f"
    if role in ("episode", "support"):
        if raw:
            adapter, adapter_inits = _raw_adapter(images_in, support_images, 5)
            nodes += [
                *adapter,
                helper.make_node("Cast", [masks_in], [support_masks], to=f32),
            ]
            inits += adapter_inits
        else:
            support_images, support_masks = images_in, masks_in
        support, support_inits = _support_nodes(support_images, support_masks)
        nodes += support
        inits += support_inits
    if role in ("episode", "query"):
        if raw:
            adapter, adapter_inits = _raw_adapter(query_in, query, 4)
            nodes += adapter
            if role == "query":
                inits += adapter_inits
        else:
            query = query_in
        head, head_inits = _query_nodes(query)
        nodes += head
        inits += [init for init in head_inits if init.name not in {i.name for i in inits}]
    if role == "query":
        inits += [init for init in _support_nodes("x", "y")[1] if init.name == "axes23"]
    # The I/O follow contract.GRAPHS; the fake's cosine features are the 3 colour channels and
    # its prototypes the object and background colours (D = 3, C = 6).
    axes = {"S": side, "h": feat, "D": 3, "C": 6}
    spec = contract.GRAPHS[role]
    inputs = [
        _value_info(contract.RAW_INPUTS.get(tensor.name, tensor) if raw else tensor, axes)
        for tensor in spec.inputs
    ]
    outputs = [_value_info(tensor, axes) for tensor in spec.outputs]
    graph = helper.make_graph(nodes, f"fake_dpnet_{role}", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 9
    props = {
        contract.META_GRAPH: role,
        contract.META_INPUT_SIZE: str(size if isinstance(size, int) else 32),
        contract.META_MAX_SHOTS: str(max_shots),
        contract.META_RAW_INPUT: json.dumps(raw),
        contract.META_PRECISION: "fp32",
        contract.META_MEAN: json.dumps(list(contract.IMAGENET_MEAN)),
        contract.META_STD: json.dumps(list(contract.IMAGENET_STD)),
        **metadata,
    }
    helper.set_model_props(model, props)
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.fixture(scope="session")
def make_fake_export_dir(tmp_path_factory: pytest.TempPathFactory) -> GraphFactory:
    """Factory writing a fake export directory; returns its path.

    Keywords: ``size`` (int, or "H" for dynamic sides), ``max_shots``, ``raw``,
    ``roles`` (which graphs), ``fp16`` / ``int8`` (also write ``*_fp16.onnx`` /
    ``*_int8.onnx`` copies), ``metadata``.
    """

    def make(
        *,
        size: int | str = 32,
        max_shots: int = 5,
        raw: bool = False,
        roles: tuple[str, ...] = ("episode", "support", "query"),
        fp16: bool = False,
        int8: bool = False,
        metadata: dict[str, str] | None = None,
    ) -> Path:
        folder = tmp_path_factory.mktemp("export")
        for role in roles:
            model = build_graph(
                role, size=size, max_shots=max_shots, raw=raw, metadata=metadata or {}
            )
            onnx.save(model, folder / contract.FORMATS["ort"].file_name(role))
            for precision in [name for name, wanted in (("fp16", fp16), ("int8", int8)) if wanted]:
                props = {prop.key: prop.value for prop in model.metadata_props}
                helper.set_model_props(model, {**props, contract.META_PRECISION: precision})
                onnx.save(model, folder / contract.find_format("ort", precision).file_name(role))
        return folder

    return make


@pytest.fixture(scope="session")
def fake_export_dir(make_fake_export_dir: GraphFactory) -> Path:
    """The default fake export: size 32, up to 5 shots, all three graphs."""
    return make_fake_export_dir()


def square_scene(
    height: int, width: int, top: int, left: int, side: int
) -> tuple[np.ndarray, np.ndarray]:
    """A red square on a blue background with some noise: ``uint8 [H, W, 3]`` and its 0/1 mask."""
    rng = np.random.default_rng(height * 1000 + width)
    image = np.zeros((height, width, 3), np.uint8)
    image[..., 2] = 200
    mask = np.zeros((height, width), np.uint8)
    mask[top : top + side, left : left + side] = 1
    image[mask == 1] = (220, 20, 20)
    noise = rng.integers(0, 20, size=image.shape, dtype=np.uint8)
    return image + noise, mask


@pytest.fixture
def scene() -> Callable[..., tuple[np.ndarray, np.ndarray]]:
    """The :func:`square_scene` builder."""
    return square_scene
