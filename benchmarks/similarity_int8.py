"""The CCM similarity in INT8 on ONNX Runtime CPU: which kernel, measured side by side.

``python -m dpnet_bench.similarity_int8`` builds one small graph per variant of the CCM's core,
``[1,K,Ns,D] x [1,1,D,Nq]`` similarity followed by both ArgMax of the cycle (what the CCM
reads of the scores), and times them in turn, run after run, on the same inputs:

- ``fp32``: MatMul on float keys (today's float CCM);
- ``qdq``: QuantizeLinear -> DequantizeLinear on both keys, then MatMul (ONNX Runtime fuses it
  to ``MatMulIntegerToFloat``: an integer GEMM that writes float scores);
- ``matmul_integer``: QuantizeLinear, then ``MatMulInteger`` to int32 scores that the ArgMax
  read directly (u8 x s8: support keys uint8 with zero point 128, query keys int8);
- ``matmul_integer_s8s8``: the same with int8 support keys (TensorRT's types);
- ``qlinear_matmul``: ``QLinearMatMul`` to uint8 scores (output scale from the float scores'
  range): the fastest GEMM, but 8-bit scores tie most row maxima.

Scales are symmetric per tensor from the keys' largest magnitude, as the MinMax calibration
gives. The keys are random unit vectors (features of a random trunk are about as uniform), so
the ArgMax agreement is a worst case; the models' own figures come from ``dpnet-bench``. Each
variant is also profiled once (ONNX Runtime's per-node kernel times) to split its time into
quantization, GEMM and ArgMax.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Final

import numpy as np
import onnx
import typer
from onnx import TensorProto, helper, numpy_helper
from rich.table import Table

from dpnet.data import build_dataset
from dpnet_bench.profiling import kernel_times_ms, make_session
from dpnet_bench.timing import (
    LatencyStats,
    describe_environment,
    environment_lines,
    latency_stats,
    timed_call,
)
from dpnet_export.calibration import episode_feed
from dpnet_export.ccm_int8 import similarity_node
from dpnet_runtime.console import make_app, run_app, stdout_console
from dpnet_runtime.contract import EPISODE, FORMATS, META_INPUT_SIZE
from dpnet_runtime.errors import InputError, ModelFileError, OptionError
from dpnet_runtime.fileio import atomic_write_text
from dpnet_runtime.outputs import check_report_outputs

__all__ = [
    "USABLE_GAP_PT",
    "VARIANTS",
    "SimilarityOptions",
    "SimilarityReport",
    "SimilarityRow",
    "app",
    "export_keys",
    "fastest_usable",
    "main",
    "render_similarity_markdown",
    "render_similarity_table",
    "run_similarity_int8",
    "similarity_graph",
    "similarity_report_to_dict",
]

VARIANTS: Final = ("fp32", "qdq", "matmul_integer", "matmul_integer_s8s8", "qlinear_matmul")
"""The variants timed, in report order (module docstring)."""
USABLE_GAP_PT: Final = 0.5
"""A variant is picked only if its ArgMax agree with FP32's (both ways) within this many points
of the exact INT8 product's (the ``qdq`` row: integer products, float scores); rounding the
scores themselves (``qlinear_matmul``) costs more."""
_PARTS: Final = {"QuantizeLinear": "quantize", "ArgMax": "argmax"}  # anything else: GEMM


@dataclass(frozen=True)
class SimilarityOptions:
    """What to measure.

    Args:
        side: feature side h = w (Ns = Nq = side², 41 at 321 x 321).
        channels: D (1024 in DPNet).
        shots: the K to measure, each in its own table.
        threads: ONNX Runtime intra-op threads; ``None``: the cores this process may use.
        repeats: timed runs per variant and K, interleaved (after 2 warm-up runs each).
        artifacts: an export folder: take the keys from its ``dpnet.onnx`` (the similarity's
            inputs on a synthetic ``val`` episode of K shots) instead of random unit vectors;
            side and channels are then the graph's.
    """

    side: int = 41
    channels: int = 1024
    shots: tuple[int, ...] = (1, 5)
    threads: int | None = None
    repeats: int = 10
    artifacts: Path | None = None


@dataclass(frozen=True)
class SimilarityRow:
    """One variant at one K.

    Attributes:
        variant: a name of :data:`VARIANTS`; shots: K.
        latency: similarity + both ArgMax (and the keys' quantization), per run.
        ratio_to_fp32: p50 / the ``fp32`` row's p50 at the same K.
        quantize_ms, gemm_ms, argmax_ms: profiled kernel time of each part, per run.
        forward_agreement_pct, backward_agreement_pct: ArgMax over the query (j*) and the
            support axis equal to the ``fp32`` row's.
        kernels: the ops ONNX Runtime ran (after its fusions).
    """

    variant: str
    shots: int
    latency: LatencyStats
    ratio_to_fp32: float
    quantize_ms: float
    gemm_ms: float
    argmax_ms: float
    forward_agreement_pct: float
    backward_agreement_pct: float
    kernels: tuple[str, ...]


@dataclass(frozen=True)
class SimilarityReport:
    """Every row of one run, with the machine it ran on and the keys' Ns = Nq and D."""

    options: SimilarityOptions
    threads: int
    environment: dict[str, str]
    rows: tuple[SimilarityRow, ...]
    positions: int
    channels: int


def similarity_graph(
    variant: str,
    shots: int,
    positions: int,
    channels: int,
    scales: tuple[float, float, tuple[float, int]],
) -> onnx.ModelProto:
    """The graph of one variant: ``support_keys [1,K,Ns,D]``, ``query_keys [1,1,D,Nq]`` ->
    ``forward [1,K,Ns]`` and ``backward [1,K,Nq]`` (int64 ArgMax over the last two axes).

    Args:
        scales: per-tensor scales of the support keys and the query keys (int8, symmetric),
            and the scores' uint8 scale and zero point (``qlinear_matmul`` only).
    """
    if variant not in VARIANTS:
        raise InputError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    support_scale, query_scale, (score_scale, score_zero) = scales
    unsigned = variant in ("qdq", "matmul_integer", "qlinear_matmul")
    a_zero = np.array(128, np.uint8) if unsigned else np.array(0, np.int8)
    # uint8 symmetric spans 255 steps over [-max, max], int8 symmetric 254.
    a_scale = support_scale * (254.0 / 255.0 if unsigned else 1.0)
    constants = {
        "a_scale": np.array(a_scale, np.float32),
        "a_zero": a_zero,
        "b_scale": np.array(query_scale, np.float32),
        "b_zero": np.array(0, np.int8),
        "s_scale": np.array(score_scale, np.float32),
        "s_zero": np.array(score_zero, np.uint8),
    }
    node = helper.make_node
    quantize = [
        node("QuantizeLinear", ["support_keys", "a_scale", "a_zero"], ["a_q"]),
        node("QuantizeLinear", ["query_keys", "b_scale", "b_zero"], ["b_q"]),
    ]
    dequantize = [
        node("DequantizeLinear", ["a_q", "a_scale", "a_zero"], ["a_dq"]),
        node("DequantizeLinear", ["b_q", "b_scale", "b_zero"], ["b_dq"]),
    ]
    core = {
        "fp32": [node("MatMul", ["support_keys", "query_keys"], ["scores"])],
        "qdq": [*quantize, *dequantize, node("MatMul", ["a_dq", "b_dq"], ["scores"])],
        "matmul_integer": [
            *quantize,
            node("MatMulInteger", ["a_q", "b_q", "a_zero", "b_zero"], ["scores"]),
        ],
        "qlinear_matmul": [
            *quantize,
            node(
                "QLinearMatMul",
                ["a_q", "a_scale", "a_zero", "b_q", "b_scale", "b_zero", "s_scale", "s_zero"],
                ["scores"],
            ),
        ],
    }
    core["matmul_integer_s8s8"] = core["matmul_integer"]
    nodes = [
        *core[variant],
        node("ArgMax", ["scores"], ["forward"], axis=-1, keepdims=0),
        node("ArgMax", ["scores"], ["backward"], axis=-2, keepdims=0),
    ]
    used = {name for item in nodes for name in item.input}
    graph = helper.make_graph(
        nodes,
        f"similarity_{variant}",
        [
            helper.make_tensor_value_info(
                "support_keys", TensorProto.FLOAT, [1, shots, positions, channels]
            ),
            helper.make_tensor_value_info(
                "query_keys", TensorProto.FLOAT, [1, 1, channels, positions]
            ),
        ],
        [
            helper.make_tensor_value_info("forward", TensorProto.INT64, [1, shots, positions]),
            helper.make_tensor_value_info("backward", TensorProto.INT64, [1, shots, positions]),
        ],
        [numpy_helper.from_array(value, name) for name, value in constants.items() if name in used],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def run_similarity_int8(options: SimilarityOptions) -> SimilarityReport:
    """Time and profile every variant at every K (module docstring).

    Raises:
        InputError: a size, K, thread count or repeat count below 1.
    """
    if min((options.side, options.channels, options.repeats, *options.shots)) < 1:
        raise OptionError("side, channels, shots and repeats must all be at least 1")
    if options.threads is not None and options.threads < 1:
        raise OptionError(f"threads must be at least 1, got {options.threads}")
    threads = options.threads or len(os.sched_getaffinity(0))
    measured = [_measure(options, shots, threads) for shots in options.shots]
    rows = tuple(row for rows, _ in measured for row in rows)
    positions, channels = measured[0][1]
    return SimilarityReport(options, threads, describe_environment(), rows, positions, channels)


def _measure(
    options: SimilarityOptions, shots: int, threads: int
) -> tuple[list[SimilarityRow], tuple[int, int]]:
    if options.artifacts is None:
        rng = np.random.default_rng(shots)
        support = rng.standard_normal((1, shots, options.side**2, options.channels), np.float32)
        query = rng.standard_normal((1, 1, options.channels, options.side**2), np.float32)
        support, query = _unit(support, -1), _unit(query, -2)
    else:
        support, query = export_keys(options.artifacts, shots)
    positions, channels = int(support.shape[-2]), int(support.shape[-1])
    feed = {"support_keys": support, "query_keys": query}
    scores = support @ query
    # The scores' uint8 range is asymmetric, from their minimum to their maximum (as the
    # MinMax calibration of a U8 activation): all 256 levels where the scores lie.
    low, high = float(min(scores.min(), 0.0)), float(max(scores.max(), 0.0))
    score_scale = (high - low) / 255.0
    scales = (
        float(np.abs(support).max()) / 127.0,
        float(np.abs(query).max()) / 127.0,
        (score_scale, round(-low / score_scale)),
    )
    del scores
    graphs = {v: similarity_graph(v, shots, positions, channels, scales) for v in VARIANTS}
    sessions = {variant: make_session(graph, threads) for variant, graph in graphs.items()}
    outputs = {variant: session.run(None, feed) for variant, session in sessions.items()}
    samples: dict[str, list[int]] = {variant: [] for variant in VARIANTS}
    for session in sessions.values():
        session.run(None, feed)  # the second warm-up run
    for _ in range(options.repeats):
        for variant, session in sessions.items():
            samples[variant].append(timed_call(_runner(session, feed))[1])
    del sessions
    stats = {variant: latency_stats(samples[variant]) for variant in VARIANTS}
    reference = outputs["fp32"]
    rows = []
    for variant in VARIANTS:
        parts = _parts(graphs[variant], feed, threads)
        forward, backward = (
            100.0 * float(np.mean(ours == theirs))
            for ours, theirs in zip(outputs[variant], reference, strict=True)
        )
        rows.append(
            SimilarityRow(
                variant=variant,
                shots=shots,
                latency=stats[variant],
                ratio_to_fp32=stats[variant].p50_ms / stats["fp32"].p50_ms,
                quantize_ms=parts["quantize"],
                gemm_ms=parts["gemm"],
                argmax_ms=parts["argmax"],
                forward_agreement_pct=forward,
                backward_agreement_pct=backward,
                kernels=tuple(sorted(parts["kernels"])),
            )
        )
    return rows, (positions, channels)


def export_keys(artifacts: Path, shots: int) -> tuple[np.ndarray, np.ndarray]:
    """The CCM similarity's inputs in an export's ``dpnet.onnx`` on one synthetic episode.

    Returns:
        support keys ``[1,K,Ns,D]`` and query keys ``[1,1,D,Nq]``, L2-normalised, float32.

    Raises:
        ModelFileError: no ``dpnet.onnx`` with a CCM in ``artifacts``.
    """
    path = artifacts / FORMATS["ort"].file_name(EPISODE)
    if not path.is_file():
        raise ModelFileError(f"{path} does not exist; export it with dpnet-export onnx")
    model = onnx.load(str(path))
    node = similarity_node(model)
    if node is None:
        raise ModelFileError(f"{path} has no CCM similarity; re-export it")
    for name in node.input:
        model.graph.output.append(onnx.ValueInfoProto(name=name))
    size = int({prop.key: prop.value for prop in model.metadata_props}[META_INPUT_SIZE])
    episode = build_dataset(
        "synthetic", root=None, fold=0, split="val", shots=shots, seed=0, episodes=1
    )[0]
    session = make_session(model, len(os.sched_getaffinity(0)))
    support, query = session.run(list(node.input), episode_feed(episode, size, raw_input=False))
    return support, query


def _runner(session: Any, feed: dict[str, np.ndarray]) -> Callable[[], object]:
    return lambda: session.run(None, feed)


def _unit(array: np.ndarray, axis: int) -> np.ndarray:
    return array / np.linalg.norm(array, axis=axis, keepdims=True)


def _parts(graph: onnx.ModelProto, feed: dict[str, np.ndarray], threads: int) -> dict[str, Any]:
    # The graphs' nodes are unnamed: ONNX Runtime profiles them as <op>_<index>.
    parts: dict[str, Any] = {"quantize": 0.0, "gemm": 0.0, "argmax": 0.0, "kernels": set()}
    for name, milliseconds in kernel_times_ms(graph, feed, threads=threads, runs=2).items():
        op_type = name.rsplit("_", 1)[0]
        parts["kernels"].add(op_type)
        parts[_PARTS.get(op_type, "gemm")] += milliseconds
    return parts


def fastest_usable(report: SimilarityReport, shots: int) -> SimilarityRow | None:
    """The fastest INT8 variant at ``shots`` whose matches stay within :data:`USABLE_GAP_PT`
    of the exact INT8 product's (``None`` when the run has no ``qdq`` row at ``shots``)."""
    rows = [row for row in report.rows if row.shots == shots and row.variant != "fp32"]
    exact = next((row for row in rows if row.variant == "qdq"), None)
    if exact is None:
        return None
    floor = _agreement(exact) - USABLE_GAP_PT
    usable = [row for row in rows if _agreement(row) >= floor]
    return min(usable, key=lambda row: row.latency.p50_ms)


def _agreement(row: SimilarityRow) -> float:
    return min(row.forward_agreement_pct, row.backward_agreement_pct)


def similarity_report_to_dict(report: SimilarityReport) -> dict[str, Any]:
    """JSON-ready form: options, environment, every row with its latency samples."""
    data = dataclasses.asdict(report)
    artifacts = report.options.artifacts
    data["options"]["artifacts"] = None if artifacts is None else str(artifacts)
    return data


def render_similarity_table(report: SimilarityReport) -> Table:
    """One table of every row, the pick per K in the caption."""
    table = Table(
        title=f"CCM similarity + both ArgMax, {report.positions} x {report.channels} x "
        f"{report.positions}K, {report.threads} threads"
    )
    for column in _COLUMNS:
        table.add_column(column, justify="left" if column in ("variant", "kernels") else "right")
    for row in report.rows:
        table.add_row(*_cells(row))
    table.caption = "\n".join(_pick_lines(report))
    return table


def render_similarity_markdown(report: SimilarityReport, command: str) -> str:
    """A results file: command, hardware and load, the table and the pick per K."""
    lines = [
        "# CCM similarity in INT8 on ONNX Runtime CPU: the kernels side by side",
        "",
        f"{report.positions} x {report.channels} x {report.positions}K similarity + both ArgMax.",
        "",
        f"Command: `{command}`",
        "",
        *environment_lines(report.environment, report.threads),
        "",
        "| " + " | ".join(_COLUMNS) + " |",
        "|" + "---|" * len(_COLUMNS),
        *("| " + " | ".join(_cells(row)) + " |" for row in report.rows),
        "",
        *(f"- {line}" for line in _pick_lines(report)),
    ]
    return "\n".join(lines) + "\n"


_COLUMNS: Final = (
    "K", "variant", "kernels", "p50 ms", "/ fp32", "quantize ms", "GEMM ms", "ArgMax ms",
    "j* equal %", "backward equal %",
)  # fmt: skip


def _cells(row: SimilarityRow) -> list[str]:
    return [
        str(row.shots),
        row.variant,
        ", ".join(row.kernels),
        f"{row.latency.p50_ms:.1f}",
        f"{row.ratio_to_fp32:.3f}",
        f"{row.quantize_ms:.1f}",
        f"{row.gemm_ms:.1f}",
        f"{row.argmax_ms:.1f}",
        f"{row.forward_agreement_pct:.2f}",
        f"{row.backward_agreement_pct:.2f}",
    ]


def _pick_lines(report: SimilarityReport) -> list[str]:
    lines = []
    for shots in report.options.shots:
        best = fastest_usable(report, shots)
        lines.append(
            f"K = {shots}: fastest whose matches stay within {USABLE_GAP_PT:g} pt of the exact "
            "INT8 product's (qdq): "
            + ("none" if best is None else f"{best.variant} ({best.ratio_to_fp32:.3f} x fp32)")
        )
    keys = (
        "random unit vectors (a worst case for the agreement)"
        if report.options.artifacts is None
        else f"those of {report.options.artifacts}/dpnet.onnx on a synthetic episode"
    )
    lines.append(
        "times are p50 of interleaved runs; the parts are profiled kernel times (one more "
        f"run); keys: {keys}"
    )
    return lines


app = make_app(
    name="python -m dpnet_bench.similarity_int8",
    help="The CCM similarity in INT8 on ONNX Runtime CPU: QDQ MatMul, MatMulInteger and "
    "QLinearMatMul side by side with FP32.",
)
_DEFAULTS = SimilarityOptions()


@app.command()
def command(
    side: Annotated[int, typer.Option(help="feature side h = w")] = _DEFAULTS.side,
    channels: Annotated[int, typer.Option(help="key channels D")] = _DEFAULTS.channels,
    shots: Annotated[str, typer.Option(help="the K to measure, comma-separated")] = "1,5",
    threads: Annotated[int | None, typer.Option(help="CPU threads (default: all)")] = None,
    repeats: Annotated[int, typer.Option(help="timed runs per variant")] = _DEFAULTS.repeats,
    model: Annotated[
        Path | None,
        typer.Option("--model", help="export folder: the keys of its dpnet.onnx, not random ones"),
    ] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="write the report")] = None,
    markdown: Annotated[Path | None, typer.Option(help="results file (.md)")] = None,
) -> None:
    """The CCM similarity + both ArgMax per INT8 kernel, timed in turn on the same keys."""
    check_report_outputs(json_path, markdown, {"--model": [model] if model else []})
    try:
        shot_list = tuple(int(value) for value in shots.split(","))
    except ValueError as exc:
        raise OptionError(f"--shots must be comma-separated integers, got {shots!r}") from exc
    options = SimilarityOptions(side, channels, shot_list, threads, repeats, model)
    report = run_similarity_int8(options)
    stdout_console.print(render_similarity_table(report))
    if json_path is not None:
        data = similarity_report_to_dict(report)
        atomic_write_text(json_path, json.dumps(data, indent=2) + "\n")
    if markdown is not None:
        command = f"python -m dpnet_bench.similarity_int8 {shlex.join(sys.argv[1:])}"
        atomic_write_text(markdown, render_similarity_markdown(report, command))


def main() -> None:
    """Entry point of ``python -m dpnet_bench.similarity_int8``."""
    run_app(app)


if __name__ == "__main__":
    main()
