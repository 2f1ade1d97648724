"""The artifact contract: file names, I/O tensor names, dtypes, shapes and metadata keys.

This module is the single source of truth shared by the exporter (which writes graphs that
follow it), the runtime (which feeds them) and a C++ caller (README, "I/O contract").

Shapes use B episodes, K shots, H x W the model's input size, h x w the feature size
(output stride 8: ``h = (H - 1) // 8 + 1``), C = 256 feature channels, D = 1024 cosine channels.

Whole-episode graph ``dpnet.onnx``:
    inputs  ``support_images [B,K,3,H,W] float32`` (ImageNet-normalised RGB),
            ``support_masks [B,K,H,W] float32`` (1 = object, 0 = background; 255 = ignore
            is treated as background), ``query_image [B,3,H,W] float32``.
    outputs ``logits [B,2,H,W] float32`` (background, object), ``mask [B,H,W] uint8``
            (argmax of logits), ``pseudo_count [B] int32`` (size of the confident set C'
            summed over shots), ``confidence [B,K,h,w] uint8`` (C' per shot).

Split pair: ``dpnet_support.onnx`` maps the support inputs to the support cache
(``support_cos_feats [B,K,D,h,w]`` L2-normalised, ``support_fg [B,K,h,w]``,
``prototypes [B,K,C]``); ``dpnet_query.onnx`` maps ``query_image`` plus the cache to the
same outputs as ``dpnet.onnx``.

With ``--raw-input`` images are ``uint8 [B,K,H,W,3]`` / ``[B,H,W,3]`` RGB and masks
``uint8 [B,K,H,W]``; normalisation happens inside the graph.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "CACHE_NAMES",
    "CONFIDENCE",
    "DPNET_ONNX",
    "ENGINE_FILE",
    "ENGINE_SIDECAR",
    "EPISODE_INPUTS",
    "FP16_SUFFIX",
    "IGNORE_LABEL",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LOGITS",
    "MASK",
    "META_BETA",
    "META_CHECKPOINT_SHA256",
    "META_CONFIG",
    "META_DPNET_VERSION",
    "META_GRAPH",
    "META_INPUTS",
    "META_INPUT_SIZE",
    "META_MAX_SHOTS",
    "META_MEAN",
    "META_OPSET",
    "META_OUTPUTS",
    "META_PRECISION",
    "META_RAW_INPUT",
    "META_STD",
    "OUTPUT_NAMES",
    "PROTOTYPES",
    "PSEUDO_COUNT",
    "QUERY_IMAGE",
    "QUERY_ONNX",
    "SUPPORT_COS_FEATS",
    "SUPPORT_FG",
    "SUPPORT_IMAGES",
    "SUPPORT_MASKS",
    "SUPPORT_ONNX",
    "feature_size",
    "fp16_name",
]

# Files in an export directory.
DPNET_ONNX: Final = "dpnet.onnx"
SUPPORT_ONNX: Final = "dpnet_support.onnx"
QUERY_ONNX: Final = "dpnet_query.onnx"
FP16_SUFFIX: Final = "_fp16"
ENGINE_FILE: Final = "dpnet.engine"
ENGINE_SIDECAR: Final = "dpnet.engine.json"

# Graph inputs.
SUPPORT_IMAGES: Final = "support_images"
SUPPORT_MASKS: Final = "support_masks"
QUERY_IMAGE: Final = "query_image"
EPISODE_INPUTS: Final = (SUPPORT_IMAGES, SUPPORT_MASKS, QUERY_IMAGE)

# Support cache, the outputs of the support graph and extra inputs of the query graph.
SUPPORT_COS_FEATS: Final = "support_cos_feats"
SUPPORT_FG: Final = "support_fg"
PROTOTYPES: Final = "prototypes"
CACHE_NAMES: Final = (SUPPORT_COS_FEATS, SUPPORT_FG, PROTOTYPES)

# Graph outputs.
LOGITS: Final = "logits"
MASK: Final = "mask"
PSEUDO_COUNT: Final = "pseudo_count"
CONFIDENCE: Final = "confidence"
OUTPUT_NAMES: Final = (LOGITS, MASK, PSEUDO_COUNT, CONFIDENCE)

# ONNX metadata_props keys.
META_DPNET_VERSION: Final = "dpnet_version"
META_CONFIG: Final = "model_config"
META_CHECKPOINT_SHA256: Final = "checkpoint_sha256"
META_INPUT_SIZE: Final = "input_size"
META_MEAN: Final = "mean"
META_STD: Final = "std"
META_BETA: Final = "beta"
META_OPSET: Final = "opset"
META_INPUTS: Final = "inputs"
META_OUTPUTS: Final = "outputs"
META_RAW_INPUT: Final = "raw_input"
META_PRECISION: Final = "precision"
META_GRAPH: Final = "graph"  # "episode", "support" or "query"
META_MAX_SHOTS: Final = "max_shots"

# Pre-processing constants (torchvision's ImageNet statistics, RGB order, on 0..1 pixels).
IMAGENET_MEAN: Final = (0.485, 0.456, 0.406)
IMAGENET_STD: Final = (0.229, 0.224, 0.225)
IGNORE_LABEL: Final = 255


def feature_size(input_size: int) -> int:
    """Feature side h for an input side H at output stride 8 (conv1, maxpool, layer2 strides).

    >>> feature_size(321)
    41
    """
    side = input_size
    for _ in range(3):
        side = (side - 1) // 2 + 1
    return side


def fp16_name(file_name: str) -> str:
    """Name of the mixed-precision copy of a graph file.

    >>> fp16_name("dpnet.onnx")
    'dpnet_fp16.onnx'
    """
    stem, dot, suffix = file_name.rpartition(".")
    return f"{stem}{FP16_SUFFIX}{dot}{suffix}"
