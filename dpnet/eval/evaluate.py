"""Evaluation on fixed episodes at the label's original size.

Every episode goes through the same numpy path as :mod:`dpnet_runtime`: images and masks are
resized to the model side with the runtime's canonical :func:`~dpnet_runtime.preprocess.
resize_image` / :func:`~dpnet_runtime.preprocess.resize_label_nearest` (inside
:func:`dpnet.data.transforms.episode_to_tensors`), the logits of every inference scale are
resized back to the query's original size with :func:`~dpnet_runtime.postprocess.merge_scales`
(bilinear, softmax averaged) and arg-maxed with
:func:`~dpnet_runtime.postprocess.probabilities_to_mask`. Scale ``s`` runs the model at the side
:func:`~dpnet_runtime.preprocess.scale_sides` gives, as the runtime's predictor does, so PyTorch
and every exported backend are measured on identical inputs and the same post-processing.

Episodes are those of the dataset, fixed by its seed: the same seed gives the same result.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dpnet.checkpoint import load_model
from dpnet.config import check_beta
from dpnet.data import DatasetOptions, Episode, FewShotDataset, build_dataset
from dpnet.data.transforms import collate, episode_to_tensors
from dpnet.device import resolve_device
from dpnet.metrics import IoUAccumulator
from dpnet.model.dpnet import DPNet
from dpnet_runtime.postprocess import merge_scales, probabilities_to_mask
from dpnet_runtime.preprocess import scale_sides

__all__ = [
    "ClassIoU",
    "EvalOptions",
    "EvalRequest",
    "EvalResult",
    "evaluate",
    "evaluate_checkpoint",
    "predict_episode",
]

EvalProgress = Callable[[int, int], None]
"""Called after each episode with (episodes done, episodes in total)."""


@dataclass(frozen=True)
class EvalOptions:
    """How to run the model on each episode.

    Args:
        scales: inference scales of the model side; several average their softmax (paper 5.3
            uses 0.7, 1.0, 1.3).
        beta: discriminator threshold; ``None`` uses the config's ``beta_test`` (0.2).
    """

    scales: tuple[float, ...] = (1.0,)
    beta: float | None = None

    def __post_init__(self) -> None:
        scale_sides(1, self.scales, name="scales")
        if self.beta is not None:
            check_beta(self.beta)


@dataclass(frozen=True)
class ClassIoU:
    """IoU of one class, in percent, under both protocols."""

    class_id: int
    name: str
    iou_canet: float
    iou_pfenet: float
    episodes: int


@dataclass(frozen=True)
class EvalResult:
    """Metrics of one evaluation (percent; see :mod:`dpnet.metrics`)."""

    miou_canet: float
    miou_pfenet: float
    fbiou: float
    episodes: int
    per_class: tuple[ClassIoU, ...]
    scales: tuple[float, ...]
    beta: float
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the same fields, lists for tuples)."""
        values = asdict(self)
        values["scales"] = list(self.scales)
        values["per_class"] = [asdict(item) for item in self.per_class]
        return values


@dataclass(frozen=True)
class EvalRequest:
    """Evaluate a checkpoint on a dataset: what ``dpnet-eval`` asks for.

    Args:
        ckpt: a ``dpnet-train`` checkpoint.
        dataset: ``synthetic``, ``pascal``, ``coco`` or ``folder``.
        data_root: dataset folder (not needed by ``synthetic``).
        data_options: dataset-specific options (COCO split, episode lists, folder classes).
        fold: test fold; ``None`` takes the checkpoint's when it was trained on ``dataset``,
            else 0.
        shots: K supports per episode.
        episodes: number of test episodes (1000 is the field's protocol).
        seed: episode seed.
        options: scales and beta.
        device: ``auto``, ``cpu`` or ``cuda``.
    """

    ckpt: Path
    dataset: str = "synthetic"
    data_root: Path | None = None
    data_options: DatasetOptions = field(default_factory=DatasetOptions)
    fold: int | None = None
    shots: int = 1
    episodes: int = 1000
    seed: int = 0
    options: EvalOptions = EvalOptions()
    device: str = "auto"


@torch.no_grad()
def predict_episode(
    model: DPNet, episode: Episode, options: EvalOptions = EvalOptions()
) -> np.ndarray:
    """Predicted mask of an episode's query at its original size.

    Args:
        model: a DPNet (put in eval mode by the caller).
        episode: the episode at original sizes.
        options: scales and beta.

    Returns:
        ``uint8 [H, W]`` with H x W the query's original size, 1 = object.
    """
    device = next(model.parameters()).device
    logits_per_scale = []
    for side in scale_sides(model.config.input_size, options.scales, name="scales"):
        tensors = collate([episode_to_tensors(episode, side, augment=False)])
        support = model.encode_support(
            tensors.support_images.to(device), tensors.support_masks.to(device)
        )
        logits = model.segment(tensors.query_image.to(device), support, options.beta).logits
        logits_per_scale.append(logits[0].float().cpu().numpy())
    height, width = episode.query_mask.shape
    return probabilities_to_mask(merge_scales(logits_per_scale, height, width))


def evaluate(
    model: DPNet,
    dataset: FewShotDataset,
    options: EvalOptions = EvalOptions(),
    progress: EvalProgress | None = None,
) -> EvalResult:
    """mIoU (canet and pfenet protocols), FB-IoU and per-class IoU over every episode.

    Args:
        model: the network; evaluated in eval mode, its previous mode is restored.
        dataset: the test episodes (typically the ``val`` split of a fold).
        options: scales and beta.
        progress: optional callback, see :data:`EvalProgress`.

    >>> from dpnet.config import preset
    >>> from dpnet.model.dpnet import build_dpnet
    >>> model = build_dpnet(preset("tiny"), pretrained_backbone=False)
    >>> data = build_dataset("synthetic", root=None, fold=0, split="val", shots=1, seed=0,
    ...                      episodes=2)
    >>> evaluate(model, data).episodes
    2
    """
    was_training = model.training
    model.eval()
    accumulator = IoUAccumulator(dataset.class_ids)
    start = time.perf_counter()
    try:
        for index in range(len(dataset)):
            episode = dataset[index]
            prediction = predict_episode(model, episode, options)
            accumulator.update(prediction, episode.query_mask, episode.class_id)
            if progress is not None:
                progress(index + 1, len(dataset))
    finally:
        model.train(was_training)
    metrics = accumulator.result()
    per_class = tuple(
        ClassIoU(
            class_id=class_id,
            name=dataset.class_names.get(class_id, str(class_id)),
            iou_canet=values["iou_canet"],
            iou_pfenet=values["iou_pfenet"],
            episodes=values["episodes"],
        )
        for class_id, values in sorted(metrics["per_class"].items())
    )
    return EvalResult(
        miou_canet=metrics["miou_canet"],
        miou_pfenet=metrics["miou_pfenet"],
        fbiou=metrics["fbiou"],
        episodes=metrics["episodes"],
        per_class=per_class,
        scales=options.scales,
        beta=model.config.beta_test if options.beta is None else options.beta,
        seconds=time.perf_counter() - start,
    )


def evaluate_checkpoint(request: EvalRequest, progress: EvalProgress | None = None) -> EvalResult:
    """Load ``request.ckpt``, build the test episodes and :func:`evaluate` them.

    Raises:
        ModelFileError: the checkpoint is missing or damaged.
        DatasetError: the dataset root is missing or malformed.
        InputError: bad fold, shots, episodes or options.
    """
    model, checkpoint = load_model(request.ckpt)
    model.to(resolve_device(request.device))
    same_dataset = checkpoint.meta.get("dataset") == request.dataset
    fold = request.fold if request.fold is not None else int(
        checkpoint.meta.get("fold", 0) if same_dataset else 0
    )  # fmt: skip
    dataset = build_dataset(
        request.dataset,
        root=request.data_root,
        fold=fold,
        split="val",
        shots=request.shots,
        seed=request.seed,
        episodes=request.episodes,
        **request.data_options.keywords(request.dataset),
    )
    return evaluate(model, dataset, request.options, progress)
