"""The mixed-precision copies: what the docs keep in FP32 stays FP32; mIoU parity with PyTorch."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from dpnet.checkpoint import load_model
from dpnet.data import build_dataset
from dpnet.metrics import IoUAccumulator
from dpnet_runtime import contract
from dpnet_runtime.preprocess import normalize_images

SIZE = 129
EPISODES = 100
BATCH = 10


# The modules the docs say stay FP32 in the FP16 copies, found by their class in the node
# metadata torch.onnx writes (independent of the converter's own name-scope lookup).
FP32_MODULES = (
    "dpnet.model.ccm.CycleComparison",
    "dpnet.model.ccm.Discriminator",
    "dpnet.model.pim.PrototypeInteraction",
)
_FLOATS = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    values = (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output)
    types = {v.name: v.type.tensor_type.elem_type for v in values}
    types.update({t.name: t.data_type for t in model.graph.initializer})
    return types


def _module_nodes(model: onnx.ModelProto, module: str) -> list[onnx.NodeProto]:
    def classes(node: onnx.NodeProto) -> list[str]:
        props = {p.key: p.value for p in node.metadata_props}
        return ast.literal_eval(props.get("pkg.torch.onnx.class_hierarchy", "[]"))

    return [node for node in model.graph.node if module in classes(node)]


@pytest.mark.slow
@pytest.mark.parametrize("module", FP32_MODULES)
def test_ccm_discriminator_and_pim_stay_fp32(tiny_export_dir: Path, module: str) -> None:
    for name in ("dpnet_fp16.onnx", "dpnet_query_fp16.onnx"):
        fp16 = onnx.load(tiny_export_dir / name)
        types = _elem_types(fp16)
        nodes = _module_nodes(fp16, module)
        assert nodes, f"{name}: no node of {module}"
        tensors = [t for node in nodes for t in (*node.input, *node.output) if t]
        assert set(tensors) <= set(types), f"{name}: untyped {set(tensors) - set(types)}"
        floats = {t: types[t] for t in tensors if types[t] in _FLOATS}
        assert floats, f"{name}: {module} has no float tensor"
        half = sorted(t for t, elem in floats.items() if elem == onnx.TensorProto.FLOAT16)
        assert not half, f"{name}: {module} computes in FP16: {half}"


@pytest.mark.slow
def test_normalisation_and_argmax_stay_fp32_and_weights_are_fp16(tiny_export_dir: Path) -> None:
    fp32 = onnx.load(tiny_export_dir / "dpnet.onnx")
    fp16 = onnx.load(tiny_export_dir / "dpnet_fp16.onnx")
    types = _elem_types(fp16)
    reduce_l2 = [node for node in fp16.graph.node if node.op_type == "ReduceL2"]
    assert len(reduce_l2) == 2, "support and query L2 normalisation"
    for node in [n for n in fp16.graph.node if n.op_type in ("ArgMax", "ReduceL2", "Softmax")]:
        assert types[node.input[0]] == onnx.TensorProto.FLOAT, node.name
    weights = [t for t in fp16.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16]
    assert sum(np.prod(t.dims) for t in weights) > 0.9 * sum(
        np.prod(t.dims) for t in fp32.graph.initializer
    )


@torch.no_grad()
@pytest.mark.slow
def test_fp16_miou_matches_torch_fp32(
    tiny_segmenting_checkpoint: Path, tiny_segmenting_export_dir: Path
) -> None:
    model, _ = load_model(tiny_segmenting_checkpoint)
    dataset = build_dataset(
        "synthetic",
        root=None,
        fold=0,
        split="val",
        shots=1,
        seed=0,
        episodes=EPISODES,
        image_size=SIZE,
    )
    session = ort.InferenceSession(
        str(tiny_segmenting_export_dir / "dpnet_fp16.onnx"),
        providers=["CPUExecutionProvider"],
    )
    torch_acc, fp16_acc = IoUAccumulator(dataset.class_ids), IoUAccumulator(dataset.class_ids)
    intersection = union = 0
    for start in range(0, EPISODES, BATCH):
        episodes = [dataset[i] for i in range(start, start + BATCH)]
        feed = {
            contract.SUPPORT_IMAGES: normalize_images(
                np.stack([np.stack(e.support_images) for e in episodes])
            ),
            contract.SUPPORT_MASKS: np.stack([np.stack(e.support_masks) for e in episodes]).astype(
                np.float32
            ),
            contract.QUERY_IMAGE: normalize_images(np.stack([e.query_image for e in episodes])),
        }
        cache = model.encode_support(
            *(torch.from_numpy(feed[k]) for k in ("support_images", "support_masks"))
        )
        output = model.segment(
            torch.from_numpy(feed[contract.QUERY_IMAGE]), cache, model.config.beta_test
        )
        torch_masks = output.logits.argmax(dim=1).numpy()
        assert output.selected is not None
        torch_sets = output.selected.numpy() > 0.5
        fp16_masks, fp16_sets = session.run([contract.MASK, contract.CONFIDENCE], feed)
        for episode, ref, got in zip(episodes, torch_masks, fp16_masks, strict=True):
            torch_acc.update(ref, episode.query_mask, episode.class_id)
            fp16_acc.update(got, episode.query_mask, episode.class_id)
        intersection += int(np.count_nonzero(torch_sets & (fp16_sets > 0)))
        union += int(np.count_nonzero(torch_sets | (fp16_sets > 0)))
    reference, result = torch_acc.result(), fp16_acc.result()
    # A model that segments: equal all-background masks would make the parity check vacuous.
    assert reference["miou_pfenet"] > 10, reference
    for key in ("miou_canet", "miou_pfenet"):
        assert abs(result[key] - reference[key]) <= 0.3, (key, result[key], reference[key])
    # docs/design.md#targets: a CCM set IoU >= 0.98 for the real model. This tiny one has a random
    # trunk whose similarities are full of near-ties, so FP16 rounding of the input and trunk
    # flips some argmax (0.97 measured, 1.0 in FP32): a floor that still catches a broken keep-list.
    assert union > 0 and intersection / union >= 0.9, "CCM set IoU"
