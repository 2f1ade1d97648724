"""Export-only modules: the whole episode, the support encoder and the query head of a DPNet.

Each wrapper turns :class:`~dpnet.model.dpnet.DPNet`'s typed outputs into the flat tensors of
the artifact contract (:mod:`dpnet_runtime.contract`) and fixes the discriminator threshold
beta as a graph constant. The network is held as the attribute ``model``, so the CCM's nodes
carry the name scope ``model.ccm`` in the exported graph.

With ``raw_input=True`` images are ``uint8 [..., H, W, 3]`` RGB and masks ``uint8``; the cast,
the NHWC -> NCHW transpose and the ImageNet normalisation then happen inside the graph, with
the same arithmetic as :func:`dpnet_runtime.preprocess.normalize_images`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dpnet.model.dpnet import DPNet, SupportCache
from dpnet_runtime.contract import EPISODE, IMAGENET_MEAN, IMAGENET_STD, QUERY, SUPPORT

__all__ = [
    "GRAPH_MODULES",
    "EpisodeGraph",
    "QueryGraph",
    "SupportGraph",
    "contract_outputs",
    "normalize_uint8",
]

EpisodeOutputs = tuple[Tensor, Tensor, Tensor, Tensor]


def normalize_uint8(images: Tensor) -> Tensor:
    """``uint8 [..., H, W, 3]`` RGB -> ImageNet-normalised ``float32 [..., 3, H, W]``."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32) * 255.0
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32) * 255.0
    normalized = (images.to(torch.float32) - mean) / std
    return normalized.movedim(-1, -3)


def contract_outputs(
    logits: Tensor, selected: Tensor | None, feature_shape: tuple[int, ...]
) -> EpisodeOutputs:
    """The contract's outputs from a query pass.

    Args:
        logits: ``[B, 2, H, W]``.
        selected: ``[B, K, h, w]`` float 0/1 set C', or ``None`` for the ablations without one.
        feature_shape: ``(B, K, h, w)``, used when ``selected`` is ``None``.

    Returns:
        ``logits [B, 2, H, W] float32``, ``mask [B, H, W] uint8``, ``pseudo_count [B] int32``
        (|C'| summed over shots), ``confidence [B, K, h, w] uint8`` (C').
    """
    if selected is None:
        selected = logits.new_zeros(feature_shape)
    mask = logits.argmax(dim=1).to(torch.uint8)
    pseudo_count = selected.sum(dim=(1, 2, 3)).to(torch.int32)
    return logits, mask, pseudo_count, selected.to(torch.uint8)


class _Wrapper(nn.Module):
    def __init__(self, model: DPNet, beta: float, raw_input: bool) -> None:
        super().__init__()
        self.model = model.eval()
        self.beta = beta
        self.raw_input = raw_input

    def _images(self, images: Tensor) -> Tensor:
        return normalize_uint8(images) if self.raw_input else images

    def _masks(self, masks: Tensor) -> Tensor:
        return masks.to(torch.float32) if self.raw_input else masks

    def _encode(self, support_images: Tensor, support_masks: Tensor) -> SupportCache:
        return self.model.encode_support(self._images(support_images), self._masks(support_masks))

    def _segment(self, query_image: Tensor, cache: SupportCache) -> EpisodeOutputs:
        output = self.model.segment(self._images(query_image), cache, self.beta)
        return contract_outputs(output.logits, output.selected, tuple(cache.fg.shape))


class EpisodeGraph(_Wrapper):
    """``dpnet.onnx``: supports + query -> logits, mask, pseudo_count, confidence.

    Args:
        model: the network (put in eval mode).
        beta: discriminator threshold baked into the graph.
        raw_input: uint8 NHWC images and uint8 masks, normalised in the graph.
    """

    def forward(
        self, support_images: Tensor, support_masks: Tensor, query_image: Tensor
    ) -> EpisodeOutputs:
        """``[B, K, 3, H, W]``, ``[B, K, H, W]``, ``[B, 3, H, W]`` (or raw uint8) -> outputs."""
        return self._segment(query_image, self._encode(support_images, support_masks))


class SupportGraph(_Wrapper):
    """``dpnet_support.onnx``: supports -> the support cache (cos feats, fg, prototypes)."""

    def forward(
        self, support_images: Tensor, support_masks: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Returns ``support_cos_feats [B, K, 1024, h, w]``, ``support_fg [B, K, h, w]`` and
        ``prototypes [B, K, C]``."""
        cache = self._encode(support_images, support_masks)
        return cache.cos_feats, cache.fg, cache.prototypes


class QueryGraph(_Wrapper):
    """``dpnet_query.onnx``: query image + support cache -> the episode graph's outputs."""

    def forward(
        self, query_image: Tensor, support_cos_feats: Tensor, support_fg: Tensor, prototypes: Tensor
    ) -> EpisodeOutputs:
        """``[B, 3, H, W]`` (or raw uint8) plus the cache of :class:`SupportGraph`."""
        return self._segment(query_image, SupportCache(support_cos_feats, support_fg, prototypes))


GRAPH_MODULES: dict[str, type[_Wrapper]] = {
    EPISODE: EpisodeGraph,
    SUPPORT: SupportGraph,
    QUERY: QueryGraph,
}
"""Graph role of ``contract.GRAPHS`` -> the wrapper whose forward computes it; each takes
``(model, beta, raw_input)`` and returns the role's outputs in the contract's order."""
