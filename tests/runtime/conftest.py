"""Small contract-following ONNX graphs for the runtime tests, built with onnx.helper.

The graphs follow ``dpnet_runtime.contract`` exactly (names, dtypes, dynamic B and K,
metadata) but replace the network by a colour-prototype segmenter: each shot's prototype is
the mean colour under its mask (object) and outside it (background), the query pixel takes
the nearer prototype's class. So every runtime path runs for real through ONNX Runtime and a
red square on a blue background is segmented correctly, in milliseconds.
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
    """support_images/masks -> support_cos_feats, support_fg, prototypes (fg and bg colour)."""
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
        helper.make_node("Concat", ["fg_proto", "bg_proto"], [contract.PROTOTYPES], axis=2),
        helper.make_node(
            "Slice", [images, "zero2", "big2", "axes34", "step8"], [contract.SUPPORT_COS_FEATS]
        ),
        helper.make_node(
            "Slice", [masks, "zero2", "big2", "axes23", "step8"], [contract.SUPPORT_FG]
        ),
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
    nodes = [
        helper.make_node("ReduceMean", [contract.PROTOTYPES, "axis1"], ["proto"], keepdims=0),
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
        helper.make_node("Concat", ["bg_logit", "fg_logit"], [contract.LOGITS], axis=1),
        helper.make_node("ArgMax", [contract.LOGITS], ["label"], axis=1, keepdims=0),
        helper.make_node("Cast", ["label"], [contract.MASK], to=TensorProto.UINT8),
        helper.make_node(
            "Cast", [contract.SUPPORT_FG], [contract.CONFIDENCE], to=TensorProto.UINT8
        ),
        helper.make_node("ReduceSum", [contract.SUPPORT_FG, "axes123"], ["count"], keepdims=0),
        helper.make_node("Cast", ["count"], [contract.PSEUDO_COUNT], to=TensorProto.INT32),
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


def build_graph(
    role: str, *, size: int | str, max_shots: int, raw: bool, metadata: dict[str, str]
) -> onnx.ModelProto:
    """One contract graph: ``role`` in episode / support / query; ``size`` int or "H" (dynamic)."""
    side = size
    feat: int | str = contract.feature_size(size) if isinstance(size, int) else "h"
    f32, u8 = TensorProto.FLOAT, TensorProto.UINT8
    image_dtype = u8 if raw else f32
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    inputs: list[onnx.ValueInfoProto] = []
    support_images, support_masks, query = "support_f", "masks_f", "query_f"
    if role in ("episode", "support"):
        shape = ["B", "K", side, side, 3] if raw else ["B", "K", 3, side, side]
        inputs += [
            helper.make_tensor_value_info(contract.SUPPORT_IMAGES, image_dtype, shape),
            helper.make_tensor_value_info(
                contract.SUPPORT_MASKS, image_dtype, ["B", "K", side, side]
            ),
        ]
        if raw:
            adapter, adapter_inits = _raw_adapter(contract.SUPPORT_IMAGES, support_images, 5)
            nodes += [
                *adapter,
                helper.make_node("Cast", [contract.SUPPORT_MASKS], [support_masks], to=f32),
            ]
            inits += adapter_inits
        else:
            support_images, support_masks = contract.SUPPORT_IMAGES, contract.SUPPORT_MASKS
        support, support_inits = _support_nodes(support_images, support_masks)
        nodes += support
        inits += support_inits
    if role in ("episode", "query"):
        shape = ["B", side, side, 3] if raw else ["B", 3, side, side]
        inputs.append(helper.make_tensor_value_info(contract.QUERY_IMAGE, image_dtype, shape))
        if raw:
            adapter, adapter_inits = _raw_adapter(contract.QUERY_IMAGE, query, 4)
            nodes += adapter
            if role == "query":
                inits += adapter_inits
        else:
            query = contract.QUERY_IMAGE
        head, head_inits = _query_nodes(query)
        nodes += head
        inits += [init for init in head_inits if init.name not in {i.name for i in inits}]
    if role == "query":
        inputs += [
            helper.make_tensor_value_info(
                contract.SUPPORT_COS_FEATS, f32, ["B", "K", 3, feat, feat]
            ),
            helper.make_tensor_value_info(contract.SUPPORT_FG, f32, ["B", "K", feat, feat]),
            helper.make_tensor_value_info(contract.PROTOTYPES, f32, ["B", "K", 6]),
        ]
        inits += [init for init in _support_nodes("x", "y")[1] if init.name == "axes23"]
    if role == "support":
        outputs = [
            helper.make_tensor_value_info(
                contract.SUPPORT_COS_FEATS, f32, ["B", "K", 3, feat, feat]
            ),
            helper.make_tensor_value_info(contract.SUPPORT_FG, f32, ["B", "K", feat, feat]),
            helper.make_tensor_value_info(contract.PROTOTYPES, f32, ["B", "K", 6]),
        ]
    else:
        outputs = [
            helper.make_tensor_value_info(contract.LOGITS, f32, ["B", 2, side, side]),
            helper.make_tensor_value_info(contract.MASK, u8, ["B", side, side]),
            helper.make_tensor_value_info(contract.PSEUDO_COUNT, TensorProto.INT32, ["B"]),
            helper.make_tensor_value_info(contract.CONFIDENCE, u8, ["B", "K", feat, feat]),
        ]
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
def make_export_dir(tmp_path_factory: pytest.TempPathFactory) -> GraphFactory:
    """Factory writing a fake export directory; returns its path.

    Keywords: ``size`` (int, or "H" for dynamic sides), ``max_shots``, ``raw``,
    ``roles`` (which graphs), ``fp16`` (also write ``*_fp16.onnx`` copies), ``metadata``.
    """

    def make(
        *,
        size: int | str = 32,
        max_shots: int = 5,
        raw: bool = False,
        roles: tuple[str, ...] = ("episode", "support", "query"),
        fp16: bool = False,
        metadata: dict[str, str] | None = None,
    ) -> Path:
        folder = tmp_path_factory.mktemp("export")
        files = {
            "episode": contract.DPNET_ONNX,
            "support": contract.SUPPORT_ONNX,
            "query": contract.QUERY_ONNX,
        }
        for role in roles:
            model = build_graph(
                role, size=size, max_shots=max_shots, raw=raw, metadata=metadata or {}
            )
            onnx.save(model, folder / files[role])
            if fp16:
                props = {prop.key: prop.value for prop in model.metadata_props}
                helper.set_model_props(model, {**props, contract.META_PRECISION: "fp16"})
                onnx.save(model, folder / contract.fp16_name(files[role]))
        return folder

    return make


@pytest.fixture(scope="session")
def export_dir(make_export_dir: GraphFactory) -> Path:
    """The default fake export: size 32, up to 5 shots, all three graphs."""
    return make_export_dir()


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
