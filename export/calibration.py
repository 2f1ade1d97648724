"""Calibration data of the INT8 graphs: dataset episodes through the runtime's pre-processing.

The episodes come from :func:`dpnet.data.build_dataset` (any dataset the CLIs know), the
``train`` split of the fold (the classes the model was trained on: the fold's test classes are
never seen, as in training), one support per episode, and are pre-processed by
:func:`dpnet_runtime.preprocess.prepare_support` / ``prepare_query``, exactly as a deployment
feeds the graphs. Support images calibrate the trunk's support path and query images its query
path; the split graphs calibrate on the same episodes (:func:`role_feeds`: the query graph gets
the support cache of the FP32 support graph), so a trunk tensor gets the same scale in the
episode graph as in the split pair. The same options give the same feeds, hence the same
scales and byte-identical graphs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import onnx

from dpnet.data import DatasetOptions, Episode, build_dataset
from dpnet_export.onnx_to_int8 import CALIBRATION_METHODS
from dpnet_runtime.contract import GRAPHS, QUERY_IMAGE, SUPPORT, SUPPORT_IMAGES, SUPPORT_MASKS
from dpnet_runtime.errors import DatasetError, OptionError
from dpnet_runtime.preprocess import prepare_query, prepare_support

__all__ = [
    "CalibrationOptions",
    "CalibrationSet",
    "check_calibration_options",
    "episode_feed",
    "load_calibration_set",
    "role_feeds",
]

_SPLIT: Final = "train"
_SHOTS: Final = 1
_ROOTLESS: Final = ("synthetic",)  # datasets generated without files


@dataclass(frozen=True)
class CalibrationOptions:
    """Where the INT8 calibration episodes come from; the CLI flags are ``--calib-*`` twins.

    Args:
        dataset: ``synthetic`` (embedded), ``pascal``, ``coco`` or ``folder`` (any name of
            :data:`dpnet.data.DATASETS`).
        root: dataset folder (every dataset but ``synthetic``).
        data_options: the dataset-specific options (COCO split, episode lists, folder classes).
        fold: the fold whose training classes calibrate.
        episodes: number of calibration episodes (each gives a support and a query image).
        seed: episode seed.
        method: ``minmax`` (default: measured best parity, see docs/export/int8.md), ``entropy`` or
            ``percentile``.
    """

    dataset: str = "synthetic"
    root: Path | None = None
    data_options: DatasetOptions = field(default_factory=DatasetOptions)
    fold: int = 0
    episodes: int = 64
    seed: int = 0
    method: str = "minmax"

    def describe(self) -> dict[str, Any]:
        """What the calibration saw, for the graphs' ``META_CALIBRATION`` metadata."""
        return {
            "dataset": self.dataset,
            "fold": self.fold,
            "split": _SPLIT,
            "episodes": self.episodes,
            "seed": self.seed,
        }


@dataclass(frozen=True)
class CalibrationSet:
    """Pre-processed calibration episodes.

    Attributes:
        options: what they were drawn with.
        feeds: one whole-episode feed per episode: ``support_images float32 [1,1,3,S,S]``,
            ``support_masks float32 [1,1,S,S]``, ``query_image float32 [1,3,S,S]`` (uint8
            ``[1,1,S,S,3]`` / ``[1,S,S,3]`` images and masks for a raw-input export).
    """

    options: CalibrationOptions
    feeds: tuple[dict[str, np.ndarray], ...]


def check_calibration_options(options: CalibrationOptions) -> None:
    """Reject options that cannot calibrate, before any slow work.

    Raises:
        InputError: no episodes, an unknown method, a dataset that needs ``--data-root``
            without one, or a dataset option the dataset does not take.
    """
    if options.episodes < 1:
        raise OptionError(
            f"--calib-episodes must be at least 1, got {options.episodes}: INT8 needs "
            "calibration episodes"
        )
    if options.method not in CALIBRATION_METHODS:
        raise OptionError(
            f"--calib-method must be one of {', '.join(CALIBRATION_METHODS)}, "
            f"got {options.method!r}"
        )
    if options.root is None and options.dataset not in _ROOTLESS:
        raise OptionError(
            f"calibrating on {options.dataset} episodes, which need --data-root "
            "(or calibrate on the embedded data: --calib-dataset synthetic)"
        )
    options.data_options.keywords(options.dataset)


def load_calibration_set(
    options: CalibrationOptions, *, size: int, raw_input: bool
) -> CalibrationSet:
    """Draw and pre-process the calibration episodes for graphs of side ``size``.

    Raises:
        InputError: see :func:`check_calibration_options`; a support mask that vanishes at
            ``size``.
        DatasetError: the dataset cannot be read or yields no episode.
    """
    check_calibration_options(options)
    dataset = build_dataset(
        options.dataset,
        root=options.root,
        fold=options.fold,
        split=_SPLIT,
        shots=_SHOTS,
        seed=options.seed,
        episodes=options.episodes,
        **options.data_options.keywords(options.dataset),
    )
    if len(dataset) == 0:
        raise DatasetError(
            f"the {options.dataset} dataset gave no calibration episode for fold {options.fold}"
        )
    feeds = tuple(episode_feed(dataset[i], size, raw_input=raw_input) for i in range(len(dataset)))
    return CalibrationSet(options, feeds)


def episode_feed(episode: Episode, size: int, *, raw_input: bool) -> dict[str, np.ndarray]:
    """The whole-episode graph's inputs for one episode, pre-processed as the runtime does.

    Returns:
        ``support_images [1,K,3,S,S]``, ``support_masks [1,K,S,S]``, ``query_image [1,3,S,S]``
        (float32; uint8 NHWC images and uint8 masks when ``raw_input``).

    Raises:
        InputError: a support mask that vanishes at ``size``.
    """
    images, masks = prepare_support(
        episode.support_images, episode.support_masks, size, raw_input=raw_input, max_shots=None
    )
    query = prepare_query(episode.query_image, size, raw_input=raw_input)
    return {SUPPORT_IMAGES: images, SUPPORT_MASKS: masks, QUERY_IMAGE: query}


def role_feeds(
    feeds: Sequence[Mapping[str, np.ndarray]], role: str, support_graph: onnx.ModelProto
) -> list[dict[str, np.ndarray]]:
    """The feeds of graph ``role`` from whole-episode feeds, the same episodes for every role.

    Args:
        feeds: :func:`episode_feed` results.
        role: a key of ``contract.GRAPHS``.
        support_graph: the FP32 support graph: it computes the support cache that the query
            graph takes (only run when ``role`` needs inputs the episode feeds lack).

    Returns:
        One feed per episode with exactly the role's inputs.
    """
    names = GRAPHS[role].input_names
    if all(name in feeds[0] for name in names):
        return [{name: feed[name] for name in names} for feed in feeds]
    caches = _support_caches(feeds, support_graph)
    return [
        {name: {**feed, **cache}[name] for name in names}
        for feed, cache in zip(feeds, caches, strict=True)
    ]


def _support_caches(
    feeds: Sequence[Mapping[str, np.ndarray]], support_graph: onnx.ModelProto
) -> list[dict[str, np.ndarray]]:
    import onnxruntime as ort

    session = ort.InferenceSession(
        support_graph.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    spec = GRAPHS[SUPPORT]
    caches = []
    for feed in feeds:
        outputs = session.run(list(spec.output_names), {n: feed[n] for n in spec.input_names})
        caches.append(dict(zip(spec.output_names, outputs, strict=True)))
    return caches
