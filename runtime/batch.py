"""Segment query image *files* against one support set: masks, overlays, IoU, a contact sheet.

What ``dpnet-segment`` does, as a library. The support set is encoded once
(:meth:`~dpnet_runtime.predictor.Predictor.encode_support`) and every query then pays only the
query head. Mask files are read by the rule of :mod:`dpnet_runtime.masks` (``class_id`` reads
class-label maps), for the supports and the ground truth alike.

Names: for a query ``q.jpg``, an output folder receives ``q_mask.png`` (0 / 255), an overlay
folder ``q_overlay.png``, and the ground truth is ``LABELS/q_mask.png`` or ``LABELS/q.png``
(first found), so a folder of the ``folder`` dataset serves as queries and labels at once
(queries: :func:`dpnet_runtime.queries.expand_queries`). Every name is checked before the first
query runs: two queries with one name, a query without ground truth, an output that would land
on an input (:func:`dpnet_runtime.outputs.refuse_inputs`: a ground-truth file or folder, a
support, a folder holding the queries) or an extension an output cannot have fail at once.

IoU per image leaves ignore pixels (255) out (the pfenet protocol of :mod:`dpnet.metrics`).
An image with nothing to find and nothing predicted has no IoU ("no object"): it adds nothing
to the summed intersections and unions, and so it is left out of the mean per image too. The
report gives the mean of the per-image IoUs and the IoU of the summed intersections and unions
(what ``dpnet-eval`` reports for a class); :func:`iou_summary` words them once for the console
and the sheet.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np

from dpnet_runtime.contract import IGNORE_LABEL, Format, find_format
from dpnet_runtime.errors import InputError, OptionError
from dpnet_runtime.masks import MASK_SUFFIX
from dpnet_runtime.outputs import (
    MASK_FORMATS,
    PICTURE_FORMATS,
    make_folder,
    output_format,
    refuse_folder_holding,
    refuse_inputs,
)
from dpnet_runtime.postprocess import overlay_mask, save_image
from dpnet_runtime.predictor import Predictor
from dpnet_runtime.preprocess import load_image, load_mask
from dpnet_runtime.sheet import NO_OBJECT, Panel, query_panels, render_sheet, support_panels

__all__ = [
    "SHEET_MAX_QUERIES",
    "QueryResult",
    "SegmentReport",
    "SegmentRequest",
    "iou_summary",
    "segment_files",
    "segment_queries",
]

SHEET_MAX_QUERIES: Final = 50
"""A contact sheet shows at most this many queries (the first ones)."""

SegmentProgress = Callable[[int, int], None]
"""Called after each query with (queries done, queries in total)."""


@dataclass(frozen=True)
class SegmentRequest:
    """What to segment and where the results go (``dpnet-segment``'s options).

    Args:
        supports: (image file, mask file) pairs, K of them.
        queries: query image files (see :func:`expand_queries`).
        out: the mask file of a single query (``.png``, ``.bmp``, ``.tif``; PNG without an
            extension).
        out_dir: folder for ``<stem>_mask.png`` of every query (created).
        overlay: with ``out``, the overlay picture (``.jpg`` and ``.webp`` too); with
            ``out_dir``, the folder of ``<stem>_overlay.png`` files (may be ``out_dir`` itself).
        labels: folder of ground-truth masks (``<stem>_mask.png`` or ``<stem>.png``).
        class_id: read every mask file (supports and labels) as a class-label map of this class.
        sheet: contact sheet picture to draw (supports, then each query; see :mod:`.sheet`).
        class_name: what the object is, for the sheet's title.

    Raises:
        OptionError: no support or query, both or neither of ``out`` / ``out_dir``, ``out``
            with several queries, or an extension that ``out``, ``overlay`` or ``sheet``
            cannot be written as.
    """

    supports: tuple[tuple[Path, Path], ...]
    queries: tuple[Path, ...]
    out: Path | None = None
    out_dir: Path | None = None
    overlay: Path | None = None
    labels: Path | None = None
    class_id: int | None = None
    sheet: Path | None = None
    class_name: str | None = None

    def __post_init__(self) -> None:
        if not self.supports:
            raise OptionError("no support pair: give at least one IMAGE:MASK")
        if not self.queries:
            raise OptionError("no query image given")
        if (self.out is None) == (self.out_dir is None):
            raise OptionError("give --out: a file for one query, a folder (DIR/) for several")
        if self.out is not None:
            if len(self.queries) > 1:
                raise OptionError(
                    f"{len(self.queries)} queries (first {self.queries[0]}) need a folder: "
                    f"--out DIR/ (--out {self.out} is a file, for one query)"
                )
            output_format(self.out, "--out", MASK_FORMATS, "PNG")
            if self.overlay is not None:
                output_format(self.overlay, "--overlay", PICTURE_FORMATS, "PNG")
        if self.sheet is not None:
            output_format(self.sheet, "--sheet", PICTURE_FORMATS, "PNG")

    def inputs(self) -> dict[str, tuple[Path, ...]]:
        """The paths this request reads, by option, for
        :func:`~dpnet_runtime.outputs.refuse_inputs`."""
        return {
            "--support": tuple(path for pair in self.supports for path in pair),
            "--query": self.queries,
            "--labels": () if self.labels is None else (self.labels,),
        }


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
        iou_pct: IoU with the ground truth in percent (ignore left out); ``None`` without
            ground truth, or for a "no object" image (see ``no_object``).
        no_object: the ground truth has no object and none was predicted: IoU undefined,
            left out of the mean and (adding nothing) of the pooled IoU.
    """

    query: Path
    mask: Path
    overlay: Path | None
    label: Path | None
    object_pixels: int
    pixels: int
    pseudo_count: int
    iou_pct: float | None
    no_object: bool = False


@dataclass(frozen=True)
class SegmentReport:
    """Every query's result, the IoU summaries (with labels) and the sheet written.

    Attributes:
        results: one per query, in order.
        mean_iou_pct: mean of the per-image IoUs ("no object" images left out), or ``None``
            without labels (or with no image that has an IoU).
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
                    "no_object": result.no_object,
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
            :meth:`~dpnet_runtime.predictor.Predictor.open` and :func:`segment_queries`;
            an output inside the ``model`` folder too.
    """
    plans = _plan(request, {"--model": (Path(model),)})  # checked before the model is loaded
    try:
        fmt = find_format(backend, precision)
    except ValueError as exc:
        raise OptionError(str(exc)) from exc
    with Predictor.open(model, backend, precision=precision, **runner_options) as predictor:
        return _run(predictor, request, plans, progress, _model_line(predictor, fmt))


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
            a ground truth of another size, bad support masks, an output on or in an input.
    """
    return _run(predictor, request, _plan(request, {}), progress, _model_line(predictor, None))


def iou_summary(report: SegmentReport) -> str:
    """The IoU line of a report with ground truth, as the console and the sheet's title show it.

    >>> iou_summary(SegmentReport((), 71.25, 68.0, None, 0.0))
    'mean IoU 71.2 over 0 queries (pooled 68.0)'
    """
    scored = sum(result.iou_pct is not None for result in report.results)
    empty = sum(result.no_object for result in report.results)
    mean = "n/a" if report.mean_iou_pct is None else f"{report.mean_iou_pct:.1f}"
    pooled = "n/a" if report.pooled_iou_pct is None else f"{report.pooled_iou_pct:.1f}"
    line = f"mean IoU {mean} over {_queries(scored)} (pooled {pooled})"
    return line + (f"; {empty} with {NO_OBJECT}, none predicted" if empty else "")


def _queries(count: int) -> str:
    return f"{count} quer{'y' if count == 1 else 'ies'}"


def _run(
    predictor: Predictor,
    request: SegmentRequest,
    plans: list[_Plan],
    progress: SegmentProgress | None,
    model: str,
) -> SegmentReport:
    start = time.perf_counter()
    for folder, option in ((request.out_dir, "--out"), (request.overlay, "--overlay")):
        if folder is not None and request.out_dir is not None:
            make_folder(folder, option)
    images = [load_image(image) for image, _ in request.supports]
    masks = [
        load_mask(mask, class_id=request.class_id, require_object=True)
        for _, mask in request.supports
    ]
    support = predictor.encode_support(images, masks)
    names = [image.name for image, _ in request.supports]
    rows: list[list[Panel]] = [support_panels(images, masks, names)]
    results, counts = [], []
    for done, plan in enumerate(plans, start=1):
        query = load_image(plan.query)
        # The truth is read before any mask is written: never a prediction scored against itself.
        truth = (
            None
            if plan.label is None
            else _load_truth(plan.label, plan.query, query.shape[:2], request.class_id)
        )
        result = predictor.segment(query, support)
        save_image(plan.mask, result.mask)
        if plan.overlay is not None:
            overlay = overlay_mask(query, result.mask)
            save_image(plan.overlay, overlay, option="--overlay", formats=PICTURE_FORMATS)
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
                no_object=count is not None and iou is None,
            )
        )  # fmt: skip
        if progress is not None:
            progress(done, len(plans))
    ious = [result.iou_pct for result in results if result.iou_pct is not None]
    report = SegmentReport(
        results=tuple(results),
        mean_iou_pct=float(np.mean(ious)) if ious else None,
        pooled_iou_pct=_percent(*np.sum(counts, axis=0).tolist()) if counts else None,
        sheet=request.sheet,
        seconds=time.perf_counter() - start,
        format_name="" if predictor.format is None else predictor.format.name,
        precision=predictor.precision,
    )
    if request.sheet is not None:
        title = _sheet_title(request, report, model)
        save_image(
            request.sheet, render_sheet(rows, title), option="--sheet", formats=PICTURE_FORMATS
        )
    return report


def _plan(request: SegmentRequest, inputs: dict[str, tuple[Path, ...]]) -> list[_Plan]:
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
    if request.out_dir is not None:
        for option, output in (("--out", request.out_dir), ("--overlay", request.overlay)):
            if output is not None:
                refuse_folder_holding(output, option, {"--query": request.queries})
    pictures = (("--overlay", request.overlay if request.out else None), ("--sheet", request.sheet))
    for option, picture in pictures:
        if picture is not None and picture.is_dir():
            raise InputError(f"{option} {picture} is a folder; give a file name")
    labels = {"--labels": (*request.inputs()["--labels"], *(plan.label for plan in plans))}
    refuse_inputs(
        {
            "--out": [request.out, request.out_dir, *(plan.mask for plan in plans)],
            "--overlay": [request.overlay, *(plan.overlay for plan in plans)],
            "--sheet": [request.sheet],
        },
        {**request.inputs(), **labels, **inputs},
    )
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


def _percent(intersection: int, union: int) -> float | None:
    """IoU in percent; ``None`` for an empty union (no object, none predicted)."""
    return None if union == 0 else 100.0 * intersection / union


def _model_line(predictor: Predictor, fmt: Format | None) -> str:
    """``model out: dpnet_support.onnx + dpnet_query.onnx (ort, fp32)``."""
    files = predictor.files
    folder = files[0].parent if files else Path()
    names = " + ".join(file.name for file in files)
    kind = "" if fmt is None else f" ({fmt.backend}, {fmt.precision})"
    return f"model {folder}: {names}{kind}"


def _sheet_title(request: SegmentRequest, report: SegmentReport, model: str) -> list[str]:
    """What was segmented, how well (with ground truth), and the model that did it."""
    count = len(report.results)
    shown = min(count, SHEET_MAX_QUERIES)
    queries = _queries(count) if shown == count else f"first {shown} of {_queries(count)}"
    named = [part for part in (request.class_name, _class_number(request.class_id)) if part]
    what = f"class {', '.join(named)}" if named else "unnamed class (--class-name)"
    score = [] if report.pooled_iou_pct is None else [iou_summary(report)]
    return [f"{what}, {len(request.supports)}-shot, {queries}", *score, model]


def _class_number(class_id: int | None) -> str:
    return "" if class_id is None else f"id {class_id}"
