"""Run every subject on the same episodes and collect latency, memory, accuracy and parity.

The episodes are drawn and pre-processed once, by the runtime's numpy pre-processing
(``prepare_support`` / ``prepare_query`` through :func:`dpnet_export.calibration.episode_feed`),
so every subject gets bit-identical feeds; masks are brought back to the label's size by the
runtime's post-processing for every subject alike. Latency is the wall time of the graph calls only
(the shared pre/post-processing is not any backend's cost):

* ``episode``: the whole-episode graph (``dpnet.onnx``), one call per episode;
* ``support`` / ``query``: the split pair, the support encoded once, then the query head on
  the cached support (the cost of each further query against the same support set).

Subjects are opened and warmed up one after the other (peak memory is sampled then, when
sessions allocate their arenas), then run interleaved: episode i on every subject before
episode i + 1 on any, so a load change on a shared machine affects every row alike.
Ratios against targets use the median (p50), robust to the noise of a shared machine. A
subject that cannot run is a row with its reason, never an exception (ultralytics'
benchmark table); only the parity gates (the limits of each precision's rows of
``contract.FORMATS``) decide the CLI's exit code.

>>> report = run_suite(BenchOptions(checkpoint=Path("model.pt"), episodes=20))  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import numpy as np

from dpnet.checkpoint import load_checkpoint
from dpnet.data import build_dataset
from dpnet_bench.parity import (
    ParityResult,
    compare_to_reference,
    mask_agreement,
    score_masks,
)
from dpnet_bench.schema import (
    REFERENCE,
    STATUS_FAILED,
    STATUS_PARITY_FAILED,
    STATUS_PASSED,
    STATUS_UNAVAILABLE,
    BackendResult,
    BenchOptions,
    BenchReport,
)
from dpnet_bench.subjects import Subject, artifacts_dir, open_subject
from dpnet_bench.targets import design_targets, parity_targets
from dpnet_bench.timing import (
    RssSampler,
    describe_environment,
    latency_stats,
    timed_call,
    warm_up,
)
from dpnet_export.calibration import CalibrationOptions, episode_feed
from dpnet_runtime.contract import (
    CONFIDENCE,
    FORMATS,
    LOGITS,
    QUERY_IMAGE,
    SUPPORT_IMAGES,
    SUPPORT_MASKS,
)
from dpnet_runtime.errors import (
    BackendUnavailableError,
    DpnetError,
    ModelFileError,
    OptionError,
)
from dpnet_runtime.postprocess import merge_scales, probabilities_to_mask

__all__ = ["run_suite"]

logger = logging.getLogger(__name__)

_MIB: Final = float(1 << 20)

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class _Prepared:
    support: dict[str, np.ndarray]  # the support graph's inputs
    query: np.ndarray  # query_image [1, 3, S, S]
    label: np.ndarray
    class_id: int

    @property
    def feed(self) -> dict[str, np.ndarray]:
        """The episode graph's inputs."""
        return {**self.support, QUERY_IMAGE: self.query}


@dataclass
class _Run:
    """What one subject produced, filled while it runs."""

    episode_ns: list[int] = field(default_factory=list)
    support_ns: list[int] = field(default_factory=list)
    query_ns: list[int] = field(default_factory=list)
    masks: list[np.ndarray] = field(default_factory=list)
    split_masks: list[np.ndarray] = field(default_factory=list)
    confidence_sets: list[np.ndarray] = field(default_factory=list)
    peak_bytes: int = 0
    gpu_peak_bytes: int | None = None

    @property
    def sets(self) -> list[np.ndarray] | None:
        """The C' sets of every episode, ``None`` when the graph has no confidence output."""
        return self.confidence_sets if len(self.confidence_sets) == len(self.masks) else None


def run_suite(options: BenchOptions, progress: Progress | None = None) -> BenchReport:
    """Benchmark every requested subject on the same episodes.

    Args:
        options: see :class:`BenchOptions`.
        progress: called as ``progress(backend, done, total)`` after each episode.

    Returns:
        The report, one row per requested backend in the order of ``contract.FORMATS``.

    Raises:
        OptionError: bad options (unknown backend, episodes < 1, negative thresholds).
        ModelFileError: the checkpoint cannot be read.
        DatasetError: the dataset cannot be read.
        ExportError: the graphs had to be exported and the export failed.
    """
    _check_options(options)
    config = load_checkpoint(options.checkpoint).config
    threads = options.threads or len(os.sched_getaffinity(0))
    episodes, class_ids = _prepare_episodes(options, config.input_size)
    names = [name for name in FORMATS if name in options.backends]
    rows: dict[str, BackendResult] = {}
    active: dict[str, tuple[Subject, _Run]] = {}
    with contextlib.ExitStack() as stack:
        # LIFO: the subjects close before a temporary export folder is removed.
        calibration = CalibrationOptions(
            dataset=options.dataset,
            root=options.root,
            data_options=options.data_options,
            fold=options.fold,
        )
        artifacts, export_failures = stack.enter_context(
            artifacts_dir(options.checkpoint, options.artifacts, names, options.shots, calibration)
        )
        for name in names:
            if name in export_failures:
                rows[name] = _problem(name, export_failures[name], STATUS_FAILED)
                continue
            try:
                subject, run = _open_and_warm(
                    name, options, artifacts, threads, config.input_size, episodes[0]
                )
            except DpnetError as exc:
                rows[name] = _problem(name, str(exc), _status_of(exc))
                continue
            stack.callback(subject.close)
            active[name] = (subject, run)
        # Interleaved: every subject runs episode i before any runs episode i + 1, so a load
        # change on a shared machine hits all subjects alike instead of biasing one row.
        for done, episode in enumerate(episodes, start=1):
            for name, (subject, run) in list(active.items()):
                try:
                    _run_episode(subject, episode, run)
                except DpnetError as exc:
                    rows[name] = _problem(name, str(exc), STATUS_FAILED)
                    del active[name]
                    continue
                if progress is not None:
                    progress(name, done, len(episodes))
        for name, (subject, run) in active.items():
            rows[name] = _result(name, run, subject, episodes, class_ids)
    runs = {name: run for name, (_, run) in active.items()}
    results = tuple(_with_parity(rows[name], runs, rows, options) for name in names)
    return BenchReport(
        options=options,
        model=config.name,
        input_size=config.input_size,
        threads=threads,
        environment=describe_environment(),
        results=results,
        targets=(
            *design_targets(results, options.shots),
            *parity_targets(results, options.limits_for),
        ),
    )


def _check_options(options: BenchOptions) -> None:
    unknown = sorted(set(options.backends) - set(FORMATS))
    if unknown or not options.backends:
        raise OptionError(
            f"unknown backends {unknown}; choose from {', '.join(FORMATS)}"
            if unknown
            else f"no backend given; choose from {', '.join(FORMATS)}"
        )
    if options.episodes < 1:
        raise OptionError(f"--episodes must be at least 1, got {options.episodes}")
    if options.warmup_s < 0 or (options.threads is not None and options.threads < 1):
        raise OptionError("--warmup-s must be >= 0 seconds and --threads >= 1")
    for option, values in (
        ("--max-miou-delta", options.max_miou_delta),
        ("--min-pixel-agreement", options.min_pixel_agreement),
    ):
        for precision, limit in values.items():
            options.limits_for(precision)  # an unknown precision is an OptionError
            if limit < 0:
                raise OptionError(f"{option} {precision}={limit}: must be >= 0")
    options.data_options.keywords(options.dataset)


def _prepare_episodes(options: BenchOptions, size: int) -> tuple[list[_Prepared], tuple[int, ...]]:
    dataset = build_dataset(
        options.dataset,
        root=options.root,
        fold=options.fold,
        split="val",
        shots=options.shots,
        seed=options.seed,
        episodes=options.episodes,
        **options.data_options.keywords(options.dataset),
    )
    prepared = []
    for episode in (dataset[index] for index in range(len(dataset))):
        feed = episode_feed(episode, size, raw_input=False)
        support = {name: feed[name] for name in (SUPPORT_IMAGES, SUPPORT_MASKS)}
        prepared.append(_Prepared(support, feed[QUERY_IMAGE], episode.query_mask, episode.class_id))
    return prepared, tuple(dataset.class_ids)


def _open_and_warm(
    name: str,
    options: BenchOptions,
    artifacts: Path,
    threads: int,
    size: int,
    first: _Prepared,
) -> tuple[Subject, _Run]:
    """Open a subject and warm both paths up, sampling the RSS: its peak memory."""
    gc.collect()
    gpu = FORMATS[name].backend == "torch" and _torch_cuda_available()
    if gpu:
        import torch

        torch.cuda.reset_peak_memory_stats()
    with RssSampler() as sampler:
        subject = open_subject(
            name, options.checkpoint, artifacts, threads=threads, input_size=size
        )
        predictor = subject.predictor
        try:
            warm_up(lambda: predictor.infer_episode(first.feed), options.warmup_s)
            if predictor.has_split:
                warm_up(
                    lambda: predictor.infer_query(
                        {QUERY_IMAGE: first.query, **predictor.infer_support(first.support)}
                    ),
                    options.warmup_s,
                )
        except BaseException:
            subject.close()
            raise
    run = _Run(peak_bytes=sampler.peak_delta_bytes)
    if gpu:
        import torch

        run.gpu_peak_bytes = int(torch.cuda.max_memory_allocated())
    return subject, run


def _run_episode(subject: Subject, episode: _Prepared, run: _Run) -> None:
    """Time one episode on both paths and keep what parity needs."""
    predictor = subject.predictor
    outputs, elapsed = timed_call(lambda: predictor.infer_episode(episode.feed))
    run.episode_ns.append(elapsed)
    run.masks.append(_mask(outputs, episode.label.shape))
    if CONFIDENCE in outputs:
        run.confidence_sets.append(outputs[CONFIDENCE][0])
    if predictor.has_split:
        cache, elapsed = timed_call(lambda: predictor.infer_support(episode.support))
        run.support_ns.append(elapsed)
        feed = {QUERY_IMAGE: episode.query, **cache}
        outputs, elapsed = timed_call(lambda: predictor.infer_query(feed))
        run.query_ns.append(elapsed)
        run.split_masks.append(_mask(outputs, episode.label.shape))


def _problem(name: str, reason: str, status: str) -> BackendResult:
    info = FORMATS[name]
    logger.info("%s: %s: %s", name, status, reason)
    return BackendResult(name, info.precision, info.device, status, reason)


def _mask(outputs: dict[str, np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    probabilities = merge_scales([outputs[LOGITS][0]], shape[0], shape[1])
    return probabilities_to_mask(probabilities)


def _result(
    name: str,
    run: _Run,
    subject: Subject,
    episodes: Sequence[_Prepared],
    class_ids: Sequence[int],
) -> BackendResult:
    labels = [episode.label for episode in episodes]
    return BackendResult(
        backend=name,
        precision=subject.predictor.precision,  # what the files record, not what was asked
        device=FORMATS[name].device,
        status=STATUS_PASSED,
        artifact_mb=subject.artifact_bytes / _MIB,
        episode=latency_stats(run.episode_ns),
        support=latency_stats(run.support_ns) if run.support_ns else None,
        query=latency_stats(run.query_ns) if run.query_ns else None,
        peak_memory_mb=run.peak_bytes / _MIB,
        gpu_peak_memory_mb=None if run.gpu_peak_bytes is None else run.gpu_peak_bytes / _MIB,
        accuracy=score_masks(run.masks, labels, [e.class_id for e in episodes], class_ids),
        split_agreement_pct=mask_agreement(run.masks, run.split_masks) if run.split_masks else None,
    )


def _with_parity(
    row: BackendResult,
    runs: dict[str, _Run],
    rows: dict[str, BackendResult],
    options: BenchOptions,
) -> BackendResult:
    reference = rows.get(REFERENCE)
    if row.backend == REFERENCE or row.accuracy is None or reference is None:
        return row
    if reference.accuracy is None:
        return row
    limits = options.limits_for(row.precision)
    ours, theirs = runs[row.backend], runs[REFERENCE]
    parity = compare_to_reference(
        reference.accuracy, row.accuracy, theirs.masks, ours.masks, theirs.sets, ours.sets, limits
    )
    status = STATUS_PASSED if parity.passed else STATUS_PARITY_FAILED
    return BackendResult(
        **{**row.__dict__, "parity": parity, "status": status, "reason": _failed_gates(parity)}
    )


def _failed_gates(parity: ParityResult) -> str:
    limits, failed = parity.limits, []
    if parity.miou_delta_pt > limits.max_miou_delta_pt:
        failed.append(f"mIoU delta {parity.miou_delta_pt:.3f} pt > {limits.max_miou_delta_pt} pt")
    minimum = limits.min_pixel_agreement_pct
    if minimum is not None and parity.pixel_agreement_pct < minimum:
        failed.append(f"pixel agreement {parity.pixel_agreement_pct:.3f} % < {minimum} %")
    return "; ".join(failed)


def _torch_cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def _status_of(exc: DpnetError) -> str:
    # A missing package, device or artifact is "cannot run here"; anything else is a failure.
    unavailable = isinstance(exc, BackendUnavailableError | ModelFileError)
    return STATUS_UNAVAILABLE if unavailable else STATUS_FAILED
