"""Predictor: few-shot segmentation with exported DPNet graphs, on any backend.

>>> from dpnet_runtime import Predictor  # doctest: +SKIP
>>> with Predictor.open("out/") as predictor:  # doctest: +SKIP
...     support = predictor.encode_support([image], [mask])
...     result = predictor.segment(query, support)  # result.mask: uint8 [H, W]

The predictor holds one runner per graph and reaches backends only through
:func:`~dpnet_runtime.backends.base.open_runner`; pre- and post-processing are the same numpy
code for every backend. With the split pair the support backbone runs once per support set
(:meth:`Predictor.encode_support`); with only ``dpnet.onnx`` the support set keeps the
pre-processed support inputs and every query runs the whole episode.

Thread safety: a Predictor keeps no per-call state, so :meth:`~Predictor.encode_support`,
:meth:`~Predictor.segment` and :meth:`~Predictor.run_episode` may be called from several
threads. Runners that are thread-safe (``OrtRunner``: ``InferenceSession.run`` is) run
concurrently; calls to other runners are serialised by a lock.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import numpy as np

from dpnet_runtime.artifacts import GraphInfo, opened_format, read_graph_info, resolve_artifacts
from dpnet_runtime.backends.base import BaseRunner, open_runner
from dpnet_runtime.contract import (
    CONFIDENCE,
    EPISODE,
    GRAPHS,
    LOGITS,
    META_PRECISION,
    PSEUDO_COUNT,
    QUERY,
    QUERY_IMAGE,
    SUPPORT,
    SUPPORT_IMAGES,
    SUPPORT_MASKS,
    Format,
)
from dpnet_runtime.errors import IncompatibleModelError, InputError
from dpnet_runtime.postprocess import merge_scales, probabilities_to_mask
from dpnet_runtime.preprocess import check_image, prepare_query, prepare_support, scale_sides

__all__ = ["Predictor", "SegmentResult", "SupportSet"]

_LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class SupportSet:
    """An encoded support set, reusable for any number of queries of the same Predictor.

    Attributes:
        shots: K, the number of support pairs.
        feeds: one feed per inference scale: the support cache (``support_cos_feats
            [1,K,D,h,w]``, ``support_fg [1,K,h,w]``, ``prototypes [1,K,C]``) when the split
            pair is present, else the pre-processed ``support_images`` / ``support_masks``.
    """

    shots: int
    feeds: tuple[dict[str, np.ndarray], ...]


@dataclass(frozen=True)
class SegmentResult:
    """The segmentation of one query.

    Attributes:
        mask: ``uint8 [H, W]`` at the query's original size, 1 = object.
        probability: ``float32 [H, W]`` object probability at the original size
            (softmax averaged over the inference scales).
        logits: ``float32 [2, S, S]`` graph logits (background, object) at scale 1.0 (or the
            scale nearest to it), at the model size S.
        pseudo_count: size of the confident set C' summed over shots (diagnostics).
        confidence: ``uint8 [K, h, w]`` the set C' per shot, or ``None`` if the graph
            has no ``confidence`` output.
    """

    mask: np.ndarray
    probability: np.ndarray
    logits: np.ndarray
    pseudo_count: int
    confidence: np.ndarray | None


class Predictor:
    """Runs DPNet episodes from exported graphs: support encoding, query segmentation.

    Build it with :meth:`open`; ``__init__`` takes runners that are already active and owns
    them from then on (``close`` deactivates them).

    Args:
        runners: graph role (``episode``, ``support``, ``query``) -> active runner; the
            episode graph, the support/query pair, or both.
        multi_scale: inference scales of the model size; the softmax of every scale is
            averaged at the original size. Scales other than 1.0 need a graph with dynamic
            image sides.

    Attributes:
        precision: what the graphs record (``META_PRECISION``: ``fp32``, ``fp16``...).
        format: the row of ``contract.FORMATS`` that :meth:`open` opened (``None`` when built
            from runners directly).

    Raises:
        InputError: bad scales, or scales != 1.0 on a fixed-size graph.
        IncompatibleModelError: the graphs disagree, record no precision, or a graph breaks
            the contract.
    """

    def __init__(
        self, runners: Mapping[str, BaseRunner], *, multi_scale: Sequence[float] = (1.0,)
    ) -> None:
        self._runners = dict(runners)
        self.format: Format | None = None
        if EPISODE not in self._runners and not self.has_split:
            raise IncompatibleModelError(
                f"need dpnet.onnx or the support/query pair, got graphs {sorted(self._runners)}"
            )
        infos = [
            read_graph_info(
                role,
                runner.path,
                runner.get_input_metadata(),
                runner.get_output_metadata(),
                runner.get_properties(),
            )
            for role, runner in self._runners.items()
        ]
        self.info: GraphInfo = _consistent(infos, [r.path for r in self._runners.values()])
        self.precision: str = _recorded_precision(self._runners)
        self.sizes = _scale_sizes(multi_scale, self.info, infos)
        self._reference = int(np.argmin([abs(scale - 1.0) for scale in multi_scale]))
        serial = not all(runner.thread_safe for runner in self._runners.values())
        self._lock: contextlib.AbstractContextManager[Any] = (
            threading.Lock() if serial else contextlib.nullcontext()
        )

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        backend: str = "ort",
        *,
        precision: str | None = None,
        multi_scale: Sequence[float] = (1.0,),
        **runner_options: Any,
    ) -> Predictor:
        """Open the graphs of an export directory (or one graph file) on a backend.

        Args:
            path: a ``dpnet-export onnx --out`` directory or a graph/engine file.
            backend: ``ort`` (ONNX Runtime, default) or ``trt`` (TensorRT engine).
            precision: the row of ``contract.FORMATS`` to open (``fp32``, ``fp16``, ``int8``:
                ``dpnet_fp16.onnx``, ``dpnet_int8.engine``...). ``None`` opens the most
                faithful precision present (the backend's first row whose files exist; for a
                file, the row its name is); :attr:`format` and the log say which.
            multi_scale: inference scales (see the class docstring).
            **runner_options: the runner's keywords, e.g. ``intra_op_threads=2``.

        Raises:
            ModelFileError: missing, empty or corrupt model path (message says how to export).
            IncompatibleModelError: the files hold another precision than the one asked for
                (or than their names say): one line naming both.
            BackendUnavailableError: the backend's packages are not installed.
            OptionError: unknown backend, precision or option.
        """
        artifacts = resolve_artifacts(path, backend, precision)
        runners: dict[str, BaseRunner] = {}
        try:
            for role, file in artifacts.files.items():
                runners[role] = open_runner(backend, file, **runner_options)
            predictor = cls(runners, multi_scale=multi_scale)
            fmt = opened_format(artifacts, backend, predictor.precision, asked=bool(precision))
        except BaseException:
            for runner in runners.values():
                runner.deactivate()
            raise
        predictor.format = fmt
        how = "as asked" if precision else "the most faithful precision present"
        names = ", ".join(file.name for file in artifacts.files.values())
        _LOG.info("opened %s (%s: %s) from %s", fmt.name, fmt.precision, how, names)
        return predictor

    @property
    def files(self) -> tuple[Path, ...]:
        """The artifact file of each open runner."""
        return tuple(runner.path for runner in self._runners.values())

    @property
    def has_split(self) -> bool:
        """True when the support/query pair is open (support features are cached)."""
        return SUPPORT in self._runners and QUERY in self._runners

    def encode_support(
        self,
        images: Sequence[np.ndarray],
        masks: Sequence[np.ndarray],
        *,
        class_id: int | None = None,
    ) -> SupportSet:
        """Validate and encode K support pairs once, for any number of queries.

        Args:
            images: K images ``uint8 [H_k, W_k, 3]`` RGB, any sizes.
            masks: K masks ``[H_k, W_k]``: bool, or values in {0, 1, 255 (ignore)}; class-label
                maps with ``class_id`` (the array column of
                :data:`dpnet_runtime.masks.MASK_RULES`).
            class_id: the masks are class-label maps: this class is the object, 255 ignore.

        Returns:
            The encoded support set.

        Raises:
            InputError: bad image or mask, empty mask, K mismatch, too many shots.
        """
        feeds = []
        for size in self.sizes:
            inputs = self._support_inputs(images, masks, size, class_id)
            feeds.append(self.infer_support(inputs) if self.has_split else inputs)
        return SupportSet(shots=len(images), feeds=tuple(feeds))

    def segment(self, query: np.ndarray, support: SupportSet) -> SegmentResult:
        """Segment a query image against an encoded support set.

        Args:
            query: ``uint8 [H, W, 3]`` RGB, any size.
            support: from :meth:`encode_support` of this predictor.

        Returns:
            The result at the query's original size.

        Raises:
            InputError: bad query image, or a support set from another predictor.
        """
        return self.segment_batch([query], support)[0]

    def segment_batch(
        self, queries: Sequence[np.ndarray], support: SupportSet
    ) -> list[SegmentResult]:
        """Segment B query images against one support set, one graph call per scale.

        The support feed is repeated along B. Each result is the one :meth:`segment` gives
        for that query alone (ONNX Runtime on CPU computes every batch item with the same
        arithmetic, so the masks are bit-identical).

        Args:
            queries: B images ``uint8 [H_b, W_b, 3]`` RGB, any sizes; B at most
                :attr:`max_batch`.
            support: from :meth:`encode_support` of this predictor.

        Returns:
            B results, each at its query's original size.

        Raises:
            InputError: a bad query image, no query, or a support set from another predictor.
        """
        role = QUERY if self.has_split else EPISODE
        if len(support.feeds) != len(self.sizes) or any(
            set(feed) - set(self._runners[role].get_input_metadata()) for feed in support.feeds
        ):
            raise InputError("this support set was encoded by another Predictor; encode it again")
        if not queries:
            raise InputError("segment_batch needs at least one query image")
        images = [
            check_image(query, "query image" if len(queries) == 1 else f"query image {index}")
            for index, query in enumerate(queries, start=1)
        ]
        outputs = [
            self._infer(
                role,
                {
                    QUERY_IMAGE: np.concatenate([self._query_input(i, size) for i in images]),
                    **_repeat_batch(feed, len(images)),
                },
            )
            for size, feed in zip(self.sizes, support.feeds, strict=True)
        ]
        return [
            self._result(
                [
                    {name: value[index : index + 1] for name, value in out.items()}
                    for out in outputs
                ],
                image.shape[0],
                image.shape[1],
            )
            for index, image in enumerate(images)
        ]

    @property
    def max_batch(self) -> int | None:
        """The most queries :meth:`segment_batch` takes at once: the query graph's B bound
        (a static B, or a TensorRT profile's maximum), ``None`` when B is unbounded."""
        spec = self._runners[QUERY if self.has_split else EPISODE].get_input_metadata()[QUERY_IMAGE]
        if isinstance(spec.shape[0], int):
            return spec.shape[0]
        return None if spec.max_shape is None else spec.max_shape[0]

    def run_episode(
        self,
        support_images: Sequence[np.ndarray],
        support_masks: Sequence[np.ndarray],
        query: np.ndarray,
        *,
        class_id: int | None = None,
    ) -> SegmentResult:
        """Segment a query from K support pairs with the one-graph ``dpnet.onnx`` path.

        Falls back to :meth:`encode_support` + :meth:`segment` when only the split pair is open.

        Args:
            support_images: K images ``uint8 [H_k, W_k, 3]``.
            support_masks: K masks ``[H_k, W_k]`` (see :meth:`encode_support`).
            query: ``uint8 [H, W, 3]``.
            class_id: the masks are class-label maps of this class.

        Raises:
            InputError: see :meth:`encode_support` and :meth:`segment`.
        """
        if EPISODE not in self._runners:
            support = self.encode_support(support_images, support_masks, class_id=class_id)
            return self.segment(query, support)
        image = check_image(query, "query image")
        outputs = [
            self.infer_episode(
                {
                    **self._support_inputs(support_images, support_masks, size, class_id),
                    QUERY_IMAGE: self._query_input(image, size),
                }
            )
            for size in self.sizes
        ]
        return self._result(outputs, image.shape[0], image.shape[1])

    def infer_episode(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One batch of episodes from pre-processed feeds (the graphs' own inputs and outputs).

        Runs ``dpnet.onnx``, or the support graph then the query graph when only the split
        pair is open.

        Args:
            feed: the episode graph's inputs (``contract.GRAPHS["episode"]``), e.g.
                ``support_images [B, K, 3, S, S]``, ``support_masks [B, K, S, S]``,
                ``query_image [B, 3, S, S]``.

        Returns:
            The episode graph's outputs by name (``logits``, ``mask``, ...).

        Raises:
            InputError: the feed does not match the graph.
        """
        if EPISODE in self._runners:
            return self._infer(EPISODE, feed)
        support = {name: feed[name] for name in GRAPHS[SUPPORT].input_names}
        return self.infer_query({QUERY_IMAGE: feed[QUERY_IMAGE], **self.infer_support(support)})

    def infer_support(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The support cache of pre-processed support inputs (split pair only).

        Args:
            feed: ``support_images [B, K, 3, S, S]`` and ``support_masks [B, K, S, S]``.

        Returns:
            ``support_cos_feats``, ``support_fg`` and ``prototypes`` (``contract.GRAPHS``).

        Raises:
            InputError: the feed does not match, or only ``dpnet.onnx`` is open.
        """
        if not self.has_split:
            raise InputError(
                "the support cache needs the support/query pair; only dpnet.onnx is open"
            )
        return self._infer(SUPPORT, feed)

    def infer_query(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The query head on a pre-processed query and a support cache (split pair only).

        Args:
            feed: ``query_image [B, 3, S, S]`` plus the outputs of :meth:`infer_support`.

        Returns:
            The episode graph's outputs by name.

        Raises:
            InputError: the feed does not match, or only ``dpnet.onnx`` is open.
        """
        if not self.has_split:
            raise InputError("the query head needs the support/query pair; only dpnet.onnx is open")
        return self._infer(QUERY, feed)

    def close(self) -> None:
        """Release every runner (sessions, engines, buffers)."""
        for runner in self._runners.values():
            runner.deactivate()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _support_inputs(
        self,
        images: Sequence[np.ndarray],
        masks: Sequence[np.ndarray],
        size: int,
        class_id: int | None,
    ) -> dict[str, np.ndarray]:
        info = self.info
        support_images, support_masks = prepare_support(
            images,
            masks,
            size,
            raw_input=info.raw_input,
            max_shots=info.max_shots,
            mean=info.mean,
            std=info.std,
            class_id=class_id,
        )
        return {SUPPORT_IMAGES: support_images, SUPPORT_MASKS: support_masks}

    def _query_input(self, image: np.ndarray, size: int) -> np.ndarray:
        info = self.info
        return prepare_query(image, size, raw_input=info.raw_input, mean=info.mean, std=info.std)

    def _infer(self, role: str, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock:
            return self._runners[role].infer(feed)

    def _result(
        self, outputs: list[dict[str, np.ndarray]], height: int, width: int
    ) -> SegmentResult:
        probabilities = merge_scales([output[LOGITS][0] for output in outputs], height, width)
        reference = outputs[self._reference]
        confidence = reference.get(CONFIDENCE)
        return SegmentResult(
            mask=probabilities_to_mask(probabilities),
            probability=probabilities[1],
            logits=reference[LOGITS][0],
            pseudo_count=int(reference[PSEUDO_COUNT][0]),
            confidence=None if confidence is None else confidence[0],
        )


def _repeat_batch(feed: Mapping[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
    # One episode's support feed [1, ...] for B queries: [B, ...] (no copy when B is 1).
    return {
        name: value if batch == 1 else np.repeat(value, batch, axis=0)
        for name, value in feed.items()
    }


def _recorded_precision(runners: Mapping[str, BaseRunner]) -> str:
    # Every file says what it holds (ONNX metadata, engine sidecar): one precision for all.
    declared = {
        runner.path: runner.get_properties().get(META_PRECISION) for runner in runners.values()
    }
    for path, precision in declared.items():
        if not precision:
            raise IncompatibleModelError(
                f"{path} records no precision (metadata {META_PRECISION!r}); re-export it with "
                "dpnet-export onnx (and rebuild its engines)"
            )
    if len(set(declared.values())) > 1:
        listed = ", ".join(f"{path.name} {precision}" for path, precision in declared.items())
        raise IncompatibleModelError(
            f"the graphs of one model hold different precisions ({listed}); export them together"
        )
    return str(next(iter(declared.values())))


def _consistent(infos: list[GraphInfo], paths: list[Path]) -> GraphInfo:
    first = infos[0]
    for info, path in zip(infos[1:], paths[1:], strict=True):
        if info.export_id != first.export_id:
            # A crash between two graph writes of dpnet-export can leave graphs of two exports.
            raise IncompatibleModelError(
                f"{path} and {paths[0]} come from different exports (checkpoint or beta differ); "
                "export the graphs together with dpnet-export onnx"
            )
        if (info.input_size, info.raw_input) != (first.input_size, first.raw_input):
            raise IncompatibleModelError(
                f"{path} (size {info.input_size}, raw input {info.raw_input}) does not match "
                f"{paths[0]} (size {first.input_size}, raw input {first.raw_input}); "
                "export the graphs together"
            )
    shots = [info.max_shots for info in infos if info.max_shots is not None]
    return GraphInfo(
        graph=first.graph,
        input_size=first.input_size,
        dynamic_size=all(info.dynamic_size for info in infos),
        raw_input=first.raw_input,
        max_shots=min(shots) if shots else None,
        mean=first.mean,
        std=first.std,
        export_id=first.export_id,
    )


def _scale_sizes(
    scales: Sequence[float], info: GraphInfo, infos: list[GraphInfo]
) -> tuple[int, ...]:
    sizes = scale_sides(info.input_size, scales)
    if not info.dynamic_size and set(sizes) != {info.input_size}:
        fixed = [i.graph for i in infos if not i.dynamic_size]
        raise InputError(
            f"multi_scale={tuple(scales)} needs graphs that accept other image sizes, but the "
            f"{', '.join(fixed)} graph is fixed at {info.input_size}x{info.input_size}; "
            "use multi_scale=(1.0,) or export with dynamic image sides"
        )
    return sizes
