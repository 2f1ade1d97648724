"""Segment query image *files* against one support set: masks, overlays, IoU, a contact sheet.

What ``dpnet-segment`` does, as a library. The support set is encoded once
(:meth:`~dpnet_runtime.predictor.Predictor.encode_support`) and every query then pays only the
query head. Mask files are read by the rule of :mod:`dpnet_runtime.masks` (``class_id`` reads
class-label maps), for the supports and the ground truth alike.

Names: for a query ``q.jpg``, ``--out-dir`` receives ``q_mask.png`` (0 / 255), an overlay
folder ``q_overlay.png``, and the ground truth is ``LABELS/q_mask.png`` or ``LABELS/q.png``
(first found), so a folder of the ``folder`` dataset serves as queries and labels at once.
Query folders and globs skip files whose names end in ``_mask`` or ``_overlay`` (masks and
this module's own outputs) and hidden files. Every name is checked before the first query
runs: two queries with one name, or a query without ground truth, fail at once.

IoU per image leaves ignore pixels (255) out (the pfenet protocol of :mod:`dpnet.metrics`);
an image with nothing to find and nothing predicted scores 100. The report gives the mean of
the per-image IoUs and the IoU of the summed intersections and unions (what ``dpnet-eval``
reports for a class).
"""

from __future__ import annotations

import glob
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np

from dpnet_runtime.contract import IGNORE_LABEL
from dpnet_runtime.errors import InputError
from dpnet_runtime.masks import IMAGE_SUFFIXES, MASK_SUFFIX
from dpnet_runtime.postprocess import overlay_mask, save_png
from dpnet_runtime.predictor import Predictor
from dpnet_runtime.preprocess import load_image, load_mask
from dpnet_runtime.sheet import Panel, query_panels, render_sheet, support_panels

__all__ = [
    "SHEET_MAX_QUERIES",
    "QueryResult",
    "SegmentReport",
    "SegmentRequest",
    "expand_queries",
    "is_query_image",
    "segment_files",
    "segment_queries",
]

SHEET_MAX_QUERIES: Final = 50
"""A contact sheet shows at most this many queries (the first ones)."""
_SKIPPED_ENDINGS: Final = ("_mask", "_overlay")

SegmentProgress = Callable[[int, int], None]
"""Called after each query with (queries done, queries in total)."""


def is_query_image(path: Path) -> bool:
    """True for a visible image file whose name does not end in ``_mask`` / ``_overlay``."""
    return (
        path.suffix.lower() in IMAGE_SUFFIXES
        and not path.name.startswith(".")
        and not path.stem.endswith(_SKIPPED_ENDINGS)
    )


def expand_queries(arguments: Sequence[str | os.PathLike[str]]) -> tuple[Path, ...]:
    """Query image files from files, folders (their images, sorted) and glob patterns.

    Args:
        arguments: each a file, a folder, or a pattern with ``*``, ``?`` or ``[``.

    Returns:
        The files in argument order, each once.

    Raises:
        InputError: no argument, a missing file, or a folder / pattern without images.

    >>> expand_queries([])
    Traceback (most recent call last):
    ...
    dpnet_runtime.errors.InputError: no query given: pass an image, a folder or a pattern
    """
    if not arguments:
        raise InputError("no query given: pass an image, a folder or a pattern")
    found: dict[Path, None] = {}
    for argument in arguments:
        text = os.fspath(argument)
        path = Path(text)
        if glob.has_magic(text):
            files = [Path(match) for match in sorted(glob.glob(text))]
            where = f"pattern {text!r}"
        elif path.is_dir():
            files = sorted(path.iterdir())
            where = f"folder {path}"
        elif path.is_file():
            found[path] = None
            continue
        else:
            raise InputError(f"query {path} does not exist")
        images = [file for file in files if file.is_file() and is_query_image(file)]
        if not images:
            raise InputError(
                f"query {where} holds no image ({', '.join(IMAGE_SUFFIXES)}; names ending in "
                "_mask or _overlay are skipped)"
            )
        found.update(dict.fromkeys(images))
    return tuple(found)


@dataclass(frozen=True)
class SegmentRequest:
    """What to segment and where the results go (``dpnet-segment``'s options).

    Args:
        supports: (image file, mask file) pairs, K of them.
        queries: query image files (see :func:`expand_queries`).
        out: the mask PNG of a single query.
        out_dir: folder for ``<stem>_mask.png`` of every query (created).
        overlay: with ``out``, the overlay PNG; with ``out_dir``, the folder of
            ``<stem>_overlay.png`` files (may be ``out_dir`` itself).
        labels: folder of ground-truth masks (``<stem>_mask.png`` or ``<stem>.png``).
        class_id: read every mask file (supports and labels) as a class-label map of this class.
        sheet: contact sheet PNG to draw (supports, then each query; see :mod:`.sheet`).

    Raises:
        InputError: no support or query, both or neither of ``out`` / ``out_dir``, or ``out``
            with several queries.
    """

    supports: tuple[tuple[Path, Path], ...]
    queries: tuple[Path, ...]
    out: Path | None = None
    out_dir: Path | None = None
    overlay: Path | None = None
    labels: Path | None = None
    class_id: int | None = None
    sheet: Path | None = None

    def __post_init__(self) -> None:
        if not self.supports:
            raise InputError("no support pair: give at least one IMAGE:MASK")
        if not self.queries:
            raise InputError("no query image given")
        if (self.out is None) == (self.out_dir is None):
            raise InputError("give either --out FILE (one query) or --out-dir DIR, not both")
        if self.out is not None and len(self.queries) > 1:
            raise InputError(
                f"{len(self.queries)} queries (first {self.queries[0]}) need --out-dir DIR, "
                "not --out FILE"
            )


@dataclass(frozen=True)
class QueryResult:
    """The outcome of one query.

    Attributes:
        query: the image file.
        mask: the written mask PNG (0 / 255).
        overlay: the written overlay PNG, or ``None``.
        label: the ground-truth file, or ``None``.
        object_pixels: predicted object pixels; pixels: all pixels of the query.
        pseudo_count: size of the confident set C' (diagnostics).
        iou_pct: IoU with the ground truth in percent (ignore left out), or ``None``.
    """

    query: Path
    mask: Path
    overlay: Path | None
    label: Path | None
    object_pixels: int
    pixels: int
    pseudo_count: int
    iou_pct: float | None


@dataclass(frozen=True)
class SegmentReport:
    """Every query's result, the IoU summaries (with labels) and the sheet written.

    Attributes:
        results: one per query, in order.
        mean_iou_pct: mean of the per-image IoUs, or ``None`` without labels.
        pooled_iou_pct: IoU of the intersections and unions summed over all images.
        sheet: the contact sheet written, or ``None``.
        seconds: wall time, support encoding included.
        format_name: the row of ``contract.FORMATS`` that ran (``trt-fp16``).
        precision: the precision its files record.
    """

    results: tuple[QueryResult, ...]
    mean_iou_pct: float | None
    pooled_iou_pct: float | None
    sheet: Path | None
    seconds: float
    format_name: str = ""
    precision: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: paths as strings."""
        return {
            "queries": [
                {
                    "query": str(result.query),
                    "mask": str(result.mask),
                    "overlay": None if result.overlay is None else str(result.overlay),
                    "label": None if result.label is None else str(result.label),
                    "object_pixels": result.object_pixels,
                    "pixels": result.pixels,
                    "pseudo_count": result.pseudo_count,
                    "iou_pct": result.iou_pct,
                }
                for result in self.results
            ],
            "mean_iou_pct": self.mean_iou_pct,
            "pooled_iou_pct": self.pooled_iou_pct,
            "sheet": None if self.sheet is None else str(self.sheet),
            "seconds": self.seconds,
            "format": self.format_name,
            "precision": self.precision,
        }


@dataclass(frozen=True)
class _Plan:
    query: Path
    mask: Path
    overlay: Path | None
    label: Path | None


def segment_files(
    model: str | os.PathLike[str],
    request: SegmentRequest,
    *,
    backend: str = "ort",
    precision: str | None = None,
    progress: SegmentProgress | None = None,
    **runner_options: Any,
) -> SegmentReport:
    """Open the model on ``backend`` at ``precision`` (see
    :meth:`~dpnet_runtime.predictor.Predictor.open`) and run :func:`segment_queries`.

    Raises:
        InputError, ModelFileError, BackendUnavailableError: see
            :meth:`~dpnet_runtime.predictor.Predictor.open` and :func:`segment_queries`.
    """
    plans = _plan(request)  # names are checked before the model is loaded
    with Predictor.open(model, backend, precision=precision, **runner_options) as predictor:
        return _run(predictor, request, plans, progress)


def segment_queries(
    predictor: Predictor, request: SegmentRequest, progress: SegmentProgress | None = None
) -> SegmentReport:
    """Encode the supports once, segment every query, write masks, overlays and the sheet.

    Args:
        predictor: an open predictor.
        request: files and options.
        progress: optional callback, see :data:`SegmentProgress`.

    Returns:
        The report; masks are at each query's original size.

    Raises:
        InputError: unreadable or missing files, clashing query names, a missing ground truth,
            a ground truth of another size, bad support masks.
    """
    return _run(predictor, request, _plan(request), progress)


def _run(
    predictor: Predictor,
    request: SegmentRequest,
    plans: list[_Plan],
    progress: SegmentProgress | None,
) -> SegmentReport:
    start = time.perf_counter()
    _make_folder(request.out_dir)
    _make_folder(request.overlay if request.out_dir is not None else None)
    images = [load_image(image) for image, _ in request.supports]
    masks = [load_mask(mask, class_id=request.class_id) for _, mask in request.supports]
    support = predictor.encode_support(images, masks)
    rows: list[list[Panel]] = [support_panels(images, masks)]
    results, counts = [], []
    for done, plan in enumerate(plans, start=1):
        query = load_image(plan.query)
        result = predictor.segment(query, support)
        save_png(plan.mask, result.mask)
        if plan.overlay is not None:
            save_png(plan.overlay, overlay_mask(query, result.mask))
        truth = (
            None
            if plan.label is None
            else _load_truth(plan.label, plan.query, query.shape[:2], request.class_id)
        )
        count = None if truth is None else _iou_counts(result.mask, truth)
        iou = None if count is None else _percent(*count)
        if count is not None:
            counts.append(count)
        if request.sheet is not None and done <= SHEET_MAX_QUERIES:
            rows.append(query_panels(query, result.mask, f"query {plan.query.name}", truth, iou))
        results.append(
            QueryResult(
                plan.query, plan.mask, plan.overlay, plan.label, int(result.mask.sum()),
                int(result.mask.size), result.pseudo_count, iou,
            )
        )  # fmt: skip
        if progress is not None:
            progress(done, len(plans))
    if request.sheet is not None:
        save_png(request.sheet, render_sheet(rows, _sheet_title(request, results)))
    ious = [result.iou_pct for result in results if result.iou_pct is not None]
    return SegmentReport(
        results=tuple(results),
        mean_iou_pct=float(np.mean(ious)) if ious else None,
        pooled_iou_pct=_percent(*np.sum(counts, axis=0).tolist()) if counts else None,
        sheet=request.sheet,
        seconds=time.perf_counter() - start,
        format_name="" if predictor.format is None else predictor.format.name,
        precision=predictor.precision,
    )


def _plan(request: SegmentRequest) -> list[_Plan]:
    """Output and label paths of every query, checked before any query runs."""
    by_stem: dict[str, Path] = {}
    plans = []
    for query in request.queries:
        if query.stem in by_stem:
            raise InputError(
                f"queries {by_stem[query.stem]} and {query} would both write "
                f"{query.stem}{MASK_SUFFIX}; rename one or segment them in two runs"
            )
        by_stem[query.stem] = query
        if request.out is not None:
            mask, overlay = request.out, request.overlay
        else:
            folder = request.out_dir or Path()
            mask = folder / f"{query.stem}{MASK_SUFFIX}"
            overlay = (
                None if request.overlay is None else request.overlay / (f"{query.stem}_overlay.png")
            )
        plans.append(_Plan(query, mask, overlay, _label_of(query, request.labels)))
    return plans


def _label_of(query: Path, labels: Path | None) -> Path | None:
    if labels is None:
        return None
    candidates = (labels / f"{query.stem}{MASK_SUFFIX}", labels / f"{query.stem}.png")
    for candidate in candidates:
        if candidate.is_file() and candidate != query:
            return candidate
    raise InputError(
        f"no ground truth for query {query}: expected {candidates[0]} or {candidates[1]}"
    )


def _make_folder(folder: Path | None) -> None:
    if folder is None:
        return
    if not folder.is_dir() and folder.exists():
        raise InputError(f"output folder {folder} is a file; choose a folder")
    folder.mkdir(parents=True, exist_ok=True)


def _load_truth(
    label: Path, query: Path, shape: tuple[int, ...], class_id: int | None
) -> np.ndarray:
    truth = load_mask(label, class_id=class_id)
    if truth.shape != tuple(shape):
        raise InputError(
            f"ground truth {label} is {truth.shape[1]} x {truth.shape[0]} but query "
            f"{query} is {shape[1]} x {shape[0]}; a label has its image's size"
        )
    return truth


def _iou_counts(prediction: np.ndarray, truth: np.ndarray) -> tuple[int, int]:
    """(intersection, union) of the object with ignore pixels left out."""
    predicted = (prediction == 1) & (truth != IGNORE_LABEL)
    target = truth == 1
    return int(np.count_nonzero(predicted & target)), int(np.count_nonzero(predicted | target))


def _percent(intersection: int, union: int) -> float:
    return 100.0 if union == 0 else 100.0 * intersection / union


def _sheet_title(request: SegmentRequest, results: list[QueryResult]) -> str:
    shown = min(len(results), SHEET_MAX_QUERIES)
    queries = f"{len(results)} queries" if shown == len(results) else (
        f"first {shown} of {len(results)} queries"
    )  # fmt: skip
    ious = [result.iou_pct for result in results if result.iou_pct is not None]
    mean = f", mean IoU {np.mean(ious):.1f}" if ious else ""
    return f"{len(request.supports)}-shot, {queries}{mean}"
