"""DPNet, the Dual Prototype Network (Mao et al., AAAI 2022, https://arxiv.org/abs/2111.04345).

The forward pass is split at the support cache so that the exporter can write the same network
as one episode graph or as a support-encoder / query-head pair:

* :meth:`DPNet.encode_support`: support images and masks -> :class:`SupportCache`
  (L2-normalised cosine features, foreground at feature size, prototype per shot).
* :meth:`DPNet.segment`: query image + cache -> :class:`SegmentOutput`.

k-shot (paper 5.2): the CCM runs per shot against that shot's prototype; the K pairs
(P, P_q) are averaged before the PIM.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor, nn

from dpnet.config import DPNetConfig
from dpnet.model.backbone import Backbone, load_resnet50_state_dict
from dpnet.model.ccm import CycleComparison, Discriminator, l2_normalize, pseudo_prototypes
from dpnet.model.decoder import Decoder
from dpnet.model.msf import MultiScaleFusion
from dpnet.model.pim import PrototypeInteraction
from dpnet.model.prototype import mask_to_feature_size, masked_average_pooling
from dpnet.model.validation import validate_episode
from dpnet_runtime.contract import COS_CHANNELS

__all__ = ["DPNet", "SegmentOutput", "SupportCache", "build_dpnet", "count_parameters"]


class SupportCache(NamedTuple):
    """What a query needs from the support set.

    Attributes:
        cos_feats: ``[B, K, 1024, h, w]`` L2-normalised cosine features.
        fg: ``[B, K, h, w]`` float 0/1 support foreground at feature size.
        prototypes: ``[B, K, C]`` masked-average-pooled prototypes P.
    """

    cos_feats: Tensor
    fg: Tensor
    prototypes: Tensor


class SegmentOutput(NamedTuple):
    """Everything a query pass produces.

    Attributes:
        logits: ``[B, 2, H, W]`` (background, object).
        aux_logits: ``[B, 2, H, W]`` auxiliary branch (training only, else ``None``).
        scores: ``[B, K, h, w]`` discriminator outputs h (``ccm`` variant only, else ``None``).
        confidence: ``[B, K, h, w]`` cycle-consistent set C (``ccm``/``cosine``, else ``None``).
        selected: ``[B, K, h, w]`` the set C' that P_q averages (``ccm``/``cosine``, else ``None``).
    """

    logits: Tensor
    aux_logits: Tensor | None
    scores: Tensor | None
    confidence: Tensor | None
    selected: Tensor | None


class DPNet(nn.Module):
    """The Dual Prototype Network.

    Args:
        config: architecture, ablation switches and thresholds.

    In eval mode ``forward`` returns logits ``[B, 2, H, W]``; in training mode the full
    :class:`SegmentOutput` (auxiliary logits, discriminator scores, C and C').
    """

    def __init__(self, config: DPNetConfig) -> None:
        super().__init__()
        self.config = config
        channels = config.feature_channels
        self.backbone = Backbone(config.backbone_layers, channels, config.dropout)
        self.ccm = CycleComparison(cycle=config.pseudo_prototype == "ccm")
        self.discriminator = Discriminator(channels, config.discriminator_hidden)
        self.pim = PrototypeInteraction(channels, config.pim_reduction, config.pim_alpha_init)
        self.msf = MultiScaleFusion(channels, (1, 2, 4) if config.use_msf else (1,))
        self.decoder = Decoder(2 * channels, channels, config.aspp_rates, config.refine_blocks)
        self.aux_decoder = Decoder(channels, channels, config.aspp_rates, config.refine_blocks)
        if config.pseudo_prototype != "ccm":
            del self.discriminator
        if not config.use_pim:
            del self.pim

    def encode_support(self, support_images: Tensor, support_masks: Tensor) -> SupportCache:
        """Args: ``support_images [B, K, 3, H, W]`` normalised, ``support_masks [B, K, H, W]``
        (1 = object; 0 and 255 = not object)."""
        batch, shots = support_images.shape[:2]
        features = self.backbone(support_images.flatten(0, 1))
        size = features.features.shape[-2:]
        soft_mask = mask_to_feature_size(
            (support_masks.flatten(0, 1) == 1).to(support_images.dtype), size
        )
        prototypes = masked_average_pooling(features.features, soft_mask)
        cos_feats = l2_normalize(features.cos_features, dim=1)
        return SupportCache(
            cos_feats.reshape(batch, shots, COS_CHANNELS, *size),
            (soft_mask > 0.5).to(support_images.dtype).reshape(batch, shots, *size),
            prototypes.reshape(batch, shots, -1),
        )

    def segment(
        self, query_image: Tensor, support: SupportCache, beta: float | None = None
    ) -> SegmentOutput:
        """Segment ``query_image [B, 3, H, W]`` against a support cache.

        Args:
            beta: discriminator threshold; defaults to ``beta_train`` in training mode and
                ``beta_test`` in eval mode.
        """
        if beta is None:
            beta = self.config.beta_train if self.training else self.config.beta_test
        query = self.backbone(query_image)
        query_feats = query.features
        size = query_feats.shape[-2:]
        query_vectors = query_feats.flatten(2).transpose(1, 2)  # [B, Nq, C]
        prototypes = support.prototypes
        scores = confidence = selected = None
        mode = self.config.pseudo_prototype
        if mode == "none":
            pseudo = prototypes
        elif mode == "global":
            pseudo = query_vectors.mean(dim=1, keepdim=True).expand_as(prototypes)
        else:
            support_keys = support.cos_feats.flatten(3).transpose(-1, -2)  # [B, K, Ns, D]
            query_keys = l2_normalize(query.cos_features.flatten(2), dim=1)  # [B, D, Nq]
            confidence = self.ccm(support_keys, query_keys, support.fg.flatten(2))
            selected = confidence
            if mode == "ccm":
                scores = self.discriminator(query_vectors, prototypes)
                selected = confidence * (scores > beta).to(confidence.dtype)
            pseudo = pseudo_prototypes(query_vectors, selected, prototypes)
        prototype, pseudo_prototype = prototypes.mean(dim=1), pseudo.mean(dim=1)
        if self.config.use_pim:
            prototype, pseudo_prototype, query_feats = self.pim(
                prototype, pseudo_prototype, query_feats
            )
        fused = self.msf(query_feats, prototype)
        image_size = (query_image.shape[-2], query_image.shape[-1])
        logits = self.decoder(
            torch.cat([fused, self.msf(query_feats, pseudo_prototype)], dim=1), image_size
        )
        aux_logits = self.aux_decoder(fused, image_size) if self.training else None
        return SegmentOutput(
            logits,
            aux_logits,
            _unflatten(scores, size),
            _unflatten(confidence, size),
            _unflatten(selected, size),
        )

    def forward(
        self, support_images: Tensor, support_masks: Tensor, query_image: Tensor
    ) -> Tensor | SegmentOutput:
        """One episode batch: ``[B, K, 3, H, W]``, ``[B, K, H, W]``, ``[B, 3, H, W]``.

        Raises:
            InputError: wrong ranks, channels, mismatched B or K, mask sizes or values.
        """
        validate_episode(support_images, support_masks, query_image)
        output = self.segment(query_image, self.encode_support(support_images, support_masks))
        return output if self.training else output.logits


def _unflatten(values: Tensor | None, size: torch.Size) -> Tensor | None:
    return None if values is None else values.unflatten(-1, (size[0], size[1]))


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """``(total, trainable)`` parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable


def build_dpnet(
    config: DPNetConfig | None = None,
    *,
    backbone_weights: Path | None = None,
    pretrained_backbone: bool = True,
) -> DPNet:
    """Build a DPNet, loading ImageNet trunk weights from a local file.

    Args:
        config: defaults to the ``paper`` preset.
        backbone_weights: torchvision ``resnet50-*.pth``; ``None`` looks in the torch hub cache
            and warns loudly if nothing is there (the trunk stays random).
        pretrained_backbone: ``False`` skips the trunk weights (a checkpoint will provide them).

    >>> from dpnet.config import preset
    >>> model = build_dpnet(preset("tiny"), pretrained_backbone=False)
    """
    model = DPNet(config or DPNetConfig())
    if pretrained_backbone:
        loaded = load_resnet50_state_dict(backbone_weights)
        if loaded is not None:
            model.backbone.load_trunk(*loaded)
    return model
