"""The DPNet network, its modules and builder."""

from __future__ import annotations

from dpnet.model.dpnet import DPNet, SegmentOutput, SupportCache, build_dpnet, count_parameters

__all__ = ["DPNet", "SegmentOutput", "SupportCache", "build_dpnet", "count_parameters"]
