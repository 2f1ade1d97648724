"""What ``dpnet-bench`` is asked and what it reports: the options, rows, targets and report.

These dataclasses are the JSON and CSV schema of :mod:`dpnet_bench.report`;
:func:`dpnet_bench.suite.run_suite` fills them. The CCM micro-benchmark's options and report
(:func:`dpnet_bench.ccm_micro.run_ccm_micro`) are here too.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Final

from dpnet.data import DatasetOptions
from dpnet_bench.parity import AccuracyResult, ParityResult
from dpnet_bench.timing import LatencyStats
from dpnet_runtime.contract import ParityLimits
from dpnet_runtime.formats import REFERENCE_FORMAT, parity_limits

__all__ = [
    "REFERENCE",
    "STATUS_FAILED",
    "STATUS_PARITY_FAILED",
    "STATUS_PASSED",
    "STATUS_UNAVAILABLE",
    "BackendResult",
    "BenchOptions",
    "BenchReport",
    "CcmOptions",
    "CcmReport",
    "CcmRow",
    "TargetCheck",
]

REFERENCE: Final = REFERENCE_FORMAT
STATUS_PASSED: Final = "passed"
STATUS_UNAVAILABLE: Final = "unavailable"
STATUS_FAILED: Final = "failed"
STATUS_PARITY_FAILED: Final = "parity failed"


@dataclass(frozen=True)
class BenchOptions:
    """What to benchmark; the CLI's flags are kebab-case twins of these fields.

    Args:
        checkpoint: the PyTorch checkpoint (the reference, and the source of a missing export).
        artifacts: export directory; ``None`` exports to a temporary one, a directory without
            ``dpnet.onnx`` is exported into first.
        dataset: ``synthetic``, ``pascal``, ``coco`` or ``folder``.
        root: dataset folder (not for ``synthetic``).
        data_options: dataset-specific options (COCO split, episode lists, folder classes).
        fold: test fold 0..3.
        shots: K support pairs per episode.
        episodes: number of episodes every subject runs.
        seed: episode seed.
        backends: names of rows of ``contract.FORMATS`` (``torch``, ``ort-fp16``...).
        warmup_s: warm-up seconds per subject and path before timing.
        threads: CPU threads for every subject; ``None``: the cores this process may use.
        max_miou_delta: precision -> allowed |mIoU delta| to torch in points, overriding the
            mIoU gate of that precision's rows of ``contract.FORMATS`` (their ``limits``).
        min_pixel_agreement: precision -> smallest mask pixel agreement with torch in percent,
            overriding (or, 0, switching off) that precision's pixel gate.
    """

    checkpoint: Path
    artifacts: Path | None = None
    dataset: str = "synthetic"
    root: Path | None = None
    data_options: DatasetOptions = field(default_factory=DatasetOptions)
    fold: int = 0
    shots: int = 1
    episodes: int = 20
    seed: int = 0
    backends: tuple[str, ...] = ("torch", "ort")
    warmup_s: float = 1.0
    threads: int | None = None
    max_miou_delta: dict[str, float] = field(default_factory=dict)
    min_pixel_agreement: dict[str, float] = field(default_factory=dict)

    def limits_for(self, precision: str) -> ParityLimits:
        """The gates and reported targets of a subject of ``precision``: its rows' limits
        (:func:`dpnet_runtime.formats.parity_limits`), with the gates given here overridden.

        Raises:
            InputError: an unknown precision.
        """
        limits = parity_limits(precision)
        overrides = {
            name: values[precision]
            for name, values in (
                ("max_miou_delta_pt", self.max_miou_delta),
                ("min_pixel_agreement_pct", self.min_pixel_agreement),
            )
            if precision in values
        }
        return replace(limits, **overrides)


@dataclass(frozen=True)
class BackendResult:
    """One row of the bench table.

    Attributes:
        backend: subject name (``ort-fp16``); precision, device: from the subject table.
        status: ``passed``, ``unavailable`` (cannot run here), ``failed`` (error while
            running) or ``parity failed``; ``reason`` says why for all but ``passed``.
        artifact_mb: size of the loaded files (checkpoint, graphs or engine).
        episode / support / query: latency of the whole episode, of the support encoding
            and of the query head on a cached support (``None`` without a split pair).
        peak_memory_mb: peak RSS above the level before the subject was opened, while it
            was opened and warmed up.
        gpu_peak_memory_mb: ``torch.cuda.max_memory_allocated`` for torch on CUDA.
        accuracy: mIoU and FB-IoU of the episode path's masks.
        parity: against torch FP32 (``None`` for torch itself or without it).
        split_agreement_pct: pixel agreement of the split path's masks with the episode path's.
    """

    backend: str
    precision: str
    device: str
    status: str
    reason: str = ""
    artifact_mb: float | None = None
    episode: LatencyStats | None = None
    support: LatencyStats | None = None
    query: LatencyStats | None = None
    peak_memory_mb: float | None = None
    gpu_peak_memory_mb: float | None = None
    accuracy: AccuracyResult | None = None
    parity: ParityResult | None = None
    split_agreement_pct: float | None = None


@dataclass(frozen=True)
class TargetCheck:
    """A target of docs/design.md#targets measured in this run.

    Attributes:
        name: snake_case key with its unit (``ort_vs_torch_episode_ratio``).
        measured: the value, ``None`` when a needed subject did not run.
        limit: the target value; ``at_most`` tells the direction.
        met: whether the target holds (``None`` when not measured).
        detail: how it was measured.
        gate: a parity gate: when not met, ``dpnet-bench`` exits 3; otherwise the target is
            reported only and never changes the exit code.
    """

    name: str
    measured: float | None
    limit: float
    at_most: bool
    met: bool | None
    detail: str
    gate: bool = False


@dataclass(frozen=True)
class BenchReport:
    """Everything one ``dpnet-bench`` run measured."""

    options: BenchOptions
    model: str
    input_size: int
    threads: int
    environment: dict[str, str]
    results: tuple[BackendResult, ...]
    targets: tuple[TargetCheck, ...] = field(default=())

    @property
    def parity_failed(self) -> bool:
        """True when a subject fails a parity gate (the CLI exits 3)."""
        return any(result.status == STATUS_PARITY_FAILED for result in self.results)


@dataclass(frozen=True)
class CcmOptions:
    """What to measure.

    Args:
        episode_graph: a ``dpnet.onnx`` (321 x 321 for the paper's share), or ``None``.
        sides: feature sides h = w to time the CCM at.
        channels: D, the cosine feature channels (1024 in DPNet).
        shots: K.
        threads: ONNX Runtime intra-op threads; ``None``: the cores this process may use.
        repeats: timed runs per measurement (after 2 warm-up runs).
        gemm_size: side of the plain square MatMul used as the FLOP/s reference.
    """

    episode_graph: Path | None = None
    sides: tuple[int, ...] = (41, 61, 81)
    channels: int = 1024
    shots: int = 1
    threads: int | None = None
    repeats: int = 10
    gemm_size: int = 2048


@dataclass(frozen=True)
class CcmRow:
    """The CCM at one feature side.

    Attributes:
        side: h = w; positions: Ns = Nq = side².
        ccm: latency of the whole CCM graph.
        similarity: latency of the similarity MatMul alone.
        similarity_gflops_per_s: its achieved GFLOP/s (2 K Ns D Nq per run).
        peak_memory_mb: peak RSS above the start while the CCM session is built and run.
        similarity_matrix_mb: size of the FP32 similarity matrix (K Ns Nq x 4 bytes).
    """

    side: int
    positions: int
    ccm: LatencyStats
    similarity: LatencyStats
    similarity_gflops_per_s: float
    peak_memory_mb: float
    similarity_matrix_mb: float


@dataclass(frozen=True)
class CcmReport:
    """The micro-benchmark's results.

    Attributes:
        rows: one per side.
        plain_gemm_gflops_per_s: ONNX Runtime MatMul of ``gemm_size``³.
        numpy_gemm_gflops_per_s: numpy's matmul of the same size (its BLAS).
        episode: latency of the whole episode graph, or ``None``.
        ccm_share_pct: CCM p50 at the episode's feature side / episode p50.
        profiled_ccm_share_pct: CCM-scope kernel time / all kernel time in the profiled episode.
        profile_by_op_pct: share of kernel time per op type in the profiled episode, largest first.
        gemm_efficiency_pct: similarity GFLOP/s at the first side / plain GEMM GFLOP/s.
    """

    options: CcmOptions
    threads: int
    environment: dict[str, str]
    rows: tuple[CcmRow, ...]
    plain_gemm_gflops_per_s: float
    numpy_gemm_gflops_per_s: float
    episode: LatencyStats | None
    ccm_share_pct: float | None
    profiled_ccm_share_pct: float | None
    profile_by_op_pct: tuple[tuple[str, float], ...]
    gemm_efficiency_pct: float
