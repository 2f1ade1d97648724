"""CCM micro-benchmark: its share of an ONNX Runtime episode and how it scales with feature size.

The CCM (normalise the query keys, similarity MatMul, both ArgMax, the cycle gather and the
one-hot MatMul; :class:`dpnet.model.ccm.CycleComparison`) is exported on its own as a small
static ONNX graph per feature side (41, 61, 81 at 321, 481, 641 pixels) and timed in ONNX
Runtime with the same threads as the episode. In the same run it times the bare similarity
MatMul and a plain square MatMul (``gemm_size``³), so the similarity GEMM's FLOP/s are compared
with what this machine reaches on a large GEMM, not with a datasheet.

With an episode graph (``dpnet.onnx``) it also times the whole episode (random inputs: the
graph is static, latency does not depend on pixel values) and profiles it per node with ONNX
Runtime's profiler: the CCM's share is given both ways, standalone CCM p50 / episode p50, and
the summed kernel time of the nodes under the ``ccm`` scope / all kernel time.

>>> report = run_ccm_micro(CcmOptions(sides=(41,), repeats=5))  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import sys
import tempfile
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Final

import numpy as np
import onnx
import onnxruntime as ort
import torch
import typer
from onnx import TensorProto, helper
from rich.table import Table
from torch import Tensor, nn

from dpnet.model.ccm import CycleComparison, l2_normalize
from dpnet_bench.schema import CcmOptions, CcmReport, CcmRow
from dpnet_bench.timing import (
    LatencyStats,
    RssSampler,
    describe_environment,
    environment_lines,
    latency_stats,
    timed_call,
)
from dpnet_export.onnx_to_fp16 import CCM_SCOPE, nodes_in_scope
from dpnet_runtime.console import make_app, run_app, stdout_console
from dpnet_runtime.errors import InputError, OptionError
from dpnet_runtime.fileio import atomic_write_text
from dpnet_runtime.outputs import check_report_outputs

__all__ = [
    "app",
    "ccm_report_to_dict",
    "main",
    "render_ccm_markdown",
    "render_ccm_table",
    "run_ccm_micro",
]

_MIB: Final = float(1 << 20)
_FOREGROUND_SHARE: Final = 0.3  # support positions marked foreground in the synthetic inputs


class _CcmGraph(nn.Module):
    """The CCM as the query head runs it: query keys normalised here, support keys cached."""

    def __init__(self) -> None:
        super().__init__()
        self.ccm = CycleComparison()

    def forward(self, support_keys: Tensor, query_feats: Tensor, support_fg: Tensor) -> Tensor:
        return self.ccm(support_keys, l2_normalize(query_feats, dim=1), support_fg)


def run_ccm_micro(options: CcmOptions) -> CcmReport:
    """Measure the CCM at every side, the GEMM references and (optionally) the episode.

    Raises:
        InputError: sides, repeats or threads below 1.
        ModelFileError: the episode graph cannot be loaded.
    """
    if min((*options.sides, options.repeats, options.shots, options.threads or 1)) < 1:
        raise InputError("sides, repeats, shots and threads must all be at least 1")
    threads = options.threads or len(os.sched_getaffinity(0))
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="dpnet-ccm-") as folder:
        rows = tuple(
            _measure_side(side, options, threads, Path(folder), rng) for side in options.sides
        )
        size = options.gemm_size
        plain = _matmul_model((size, size), (size, size), Path(folder) / "gemm.onnx")
        feed = {"a": rng.standard_normal((size, size), dtype=np.float32)}
        feed["b"] = feed["a"].copy()
        plain_stats = _time_session(_session(plain, threads), feed, options.repeats)
    flop = 2.0 * size**3
    numpy_stats = _time(lambda: feed["a"] @ feed["b"], options.repeats)
    plain_gflops = flop / plain_stats.p50_ms / 1e6
    episode = profiled = None
    by_op: tuple[tuple[str, float], ...] = ()
    share = None
    if options.episode_graph is not None:
        episode, profiled, by_op, side = _profile_episode(options, threads)
        match = [row for row in rows if row.side == side]
        share = 100.0 * match[0].ccm.p50_ms / episode.p50_ms if match else None
    return CcmReport(
        options=options,
        threads=threads,
        environment=describe_environment(),
        rows=rows,
        plain_gemm_gflops_per_s=plain_gflops,
        numpy_gemm_gflops_per_s=flop / numpy_stats.p50_ms / 1e6,
        episode=episode,
        ccm_share_pct=share,
        profiled_ccm_share_pct=profiled,
        profile_by_op_pct=by_op,
        gemm_efficiency_pct=100.0 * rows[0].similarity_gflops_per_s / plain_gflops,
    )


def _measure_side(
    side: int, options: CcmOptions, threads: int, folder: Path, rng: np.random.Generator
) -> CcmRow:
    positions, shots, channels = side * side, options.shots, options.channels
    support = rng.standard_normal((1, shots, positions, channels), dtype=np.float32)
    support /= np.linalg.norm(support, axis=-1, keepdims=True)
    query = rng.standard_normal((1, channels, positions), dtype=np.float32)
    fg = (rng.random((1, shots, positions)) < _FOREGROUND_SHARE).astype(np.float32)
    path = folder / f"ccm_{side}.onnx"
    example = tuple(torch.from_numpy(array) for array in (support, query, fg))
    program = torch.onnx.export(
        _CcmGraph().eval(),
        example,
        dynamo=True,
        opset_version=18,
        input_names=["support_keys", "query_feats", "support_fg"],
        verbose=False,
    )
    assert program is not None  # dynamo=True always returns the program
    program.save(str(path))
    with RssSampler() as sampler:
        session = _session(path, threads)
        names = [arg.name for arg in session.get_inputs()]
        ccm = _time_session(
            session, dict(zip(names, (support, query, fg), strict=True)), options.repeats
        )
        del session
    similarity_path = _matmul_model(
        (shots, positions, channels), (channels, positions), folder / f"similarity_{side}.onnx"
    )
    similarity = _time_session(
        _session(similarity_path, threads), {"a": support[0], "b": query[0]}, options.repeats
    )
    flop = 2.0 * shots * positions * channels * positions
    return CcmRow(
        side=side,
        positions=positions,
        ccm=ccm,
        similarity=similarity,
        similarity_gflops_per_s=flop / similarity.p50_ms / 1e6,
        peak_memory_mb=sampler.peak_delta_bytes / _MIB,
        similarity_matrix_mb=shots * positions * positions * 4 / _MIB,
    )


def _matmul_model(a_shape: tuple[int, ...], b_shape: tuple[int, ...], path: Path) -> Path:
    node = helper.make_node("MatMul", ["a", "b"], ["c"], name="matmul")
    graph = helper.make_graph(
        [node],
        "matmul",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, list(a_shape)),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, list(b_shape)),
        ],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.save(model, str(path))
    return path


def _session(path: Path, threads: int, profile_prefix: str | None = None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _time(function: Callable[[], object], repeats: int) -> LatencyStats:
    for _ in range(2):
        function()
    return latency_stats([timed_call(function)[1] for _ in range(repeats)])


def _time_session(
    session: ort.InferenceSession, feed: dict[str, np.ndarray], repeats: int
) -> LatencyStats:
    return _time(lambda: session.run(None, feed), repeats)


def _profile_episode(
    options: CcmOptions, threads: int
) -> tuple[LatencyStats, float | None, tuple[tuple[str, float], ...], int]:
    graph = options.episode_graph
    assert graph is not None
    session = _session(graph, threads)
    feed = _episode_feed(session, options.shots)
    episode = _time_session(session, feed, options.repeats)
    side = next(arg.shape[-1] for arg in session.get_outputs() if arg.name == "confidence")
    with tempfile.TemporaryDirectory(prefix="dpnet-profile-") as folder:
        profiled = _session(graph, threads, profile_prefix=str(Path(folder) / "episode"))
        for _ in range(3):
            profiled.run(None, feed)
        events = json.loads(Path(profiled.end_profiling()).read_text())
    ccm_nodes = {node.name for node in nodes_in_scope(onnx.load(str(graph)), CCM_SCOPE)}
    per_op: dict[str, float] = defaultdict(float)
    ccm_time = total = 0.0
    for event in events:
        if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time"):
            continue
        duration = float(event.get("dur", 0))
        total += duration
        per_op[event.get("args", {}).get("op_name", "?")] += duration
        # Fused nodes keep the first original name: "node_matmul/MatmulTransposeFusion/".
        if event["name"].removesuffix("_kernel_time").split("/")[0] in ccm_nodes:
            ccm_time += duration
    by_op = (
        tuple(
            sorted(((op, 100.0 * t / total) for op, t in per_op.items()), key=lambda x: -x[1])[:8]
        )
        if total
        else ()
    )
    share = 100.0 * ccm_time / total if total and ccm_nodes else None
    return episode, share, by_op, int(side)


def _episode_feed(session: ort.InferenceSession, shots: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    size = int(session.get_inputs()[-1].shape[-1])
    mask = np.zeros((1, shots, size, size), dtype=np.float32)
    mask[..., size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 1.0
    return {
        "support_images": rng.standard_normal((1, shots, 3, size, size), dtype=np.float32),
        "support_masks": mask,
        "query_image": rng.standard_normal((1, 3, size, size), dtype=np.float32),
    }


def ccm_report_to_dict(report: CcmReport) -> dict[str, Any]:
    """The report as JSON-ready data (paths as strings; keys carry their units)."""
    data = dataclasses.asdict(report)
    episode_graph = report.options.episode_graph
    data["options"]["episode_graph"] = None if episode_graph is None else str(episode_graph)
    return data


def render_ccm_table(report: CcmReport) -> Table:
    """The scaling table, with the GEMM references and the episode share in the caption."""
    table = Table(
        title=f"CCM on ONNX Runtime, {report.options.shots}-shot, {report.threads} threads"
    )
    for column in (
        "side",
        "positions",
        "CCM p50 ms",
        "similarity MatMul p50 ms",
        "similarity GFLOP/s",
        "peak MB",
        "similarity matrix MB",
    ):
        table.add_column(column, justify="right")
    for row in report.rows:
        table.add_row(
            str(row.side),
            str(row.positions),
            f"{row.ccm.p50_ms:.1f}",
            f"{row.similarity.p50_ms:.1f}",
            f"{row.similarity_gflops_per_s:.0f}",
            f"{row.peak_memory_mb:.0f}",
            f"{row.similarity_matrix_mb:.0f}",
        )
    table.caption = "\n".join(_summary_lines(report))
    return table


def render_ccm_markdown(report: CcmReport, command: str) -> str:
    """A results file: command, hardware, versions, the scaling table and the share."""
    env = report.environment
    lines = [
        "# CCM micro-benchmark (ONNX Runtime, CPU)",
        "",
        f"Command: `{command}`",
        "",
        *environment_lines(env, report.threads),
        "",
        "| side | positions | CCM p50 ms | similarity MatMul p50 ms | similarity GFLOP/s "
        "| peak MB | similarity matrix MB |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in report.rows:
        lines.append(
            f"| {row.side} | {row.positions} | {row.ccm.p50_ms:.1f} | {row.similarity.p50_ms:.1f} "
            f"| {row.similarity_gflops_per_s:.0f} | {row.peak_memory_mb:.0f} "
            f"| {row.similarity_matrix_mb:.0f} |"
        )
    lines += ["", *(f"- {line}" for line in _summary_lines(report))]
    if report.profile_by_op_pct:
        lines.append(
            "- episode kernel time by op: "
            + ", ".join(f"{op} {pct:.1f} %" for op, pct in report.profile_by_op_pct)
        )
    return "\n".join(lines) + "\n"


def _summary_lines(report: CcmReport) -> list[str]:
    lines = [
        f"plain {report.options.gemm_size}³ MatMul: ONNX Runtime "
        f"{report.plain_gemm_gflops_per_s:.0f} GFLOP/s, numpy {report.numpy_gemm_gflops_per_s:.0f}"
        f" GFLOP/s; similarity GEMM at side {report.rows[0].side}: "
        f"{report.gemm_efficiency_pct:.0f} % of the ONNX Runtime figure",
    ]
    if report.episode is not None:
        share = "-" if report.ccm_share_pct is None else f"{report.ccm_share_pct:.1f} %"
        profiled = (
            "-"
            if report.profiled_ccm_share_pct is None
            else f"{report.profiled_ccm_share_pct:.1f} %"
        )
        lines.append(
            f"episode p50 {report.episode.p50_ms:.1f} ms; CCM share: standalone {share}, "
            f"profiled (ccm-scope kernels) {profiled}"
        )
    return lines


app = make_app(
    name="python -m dpnet_bench.ccm_micro",
    help="The CCM's share of an ONNX Runtime episode and its scaling with the feature size.",
)
_DEFAULTS = CcmOptions()


@app.command()
def command(
    model: Annotated[
        Path | None, typer.Option(help="export directory whose dpnet.onnx gives the episode time")
    ] = None,
    sides: Annotated[str, typer.Option(help="feature sides")] = ",".join(
        str(side) for side in _DEFAULTS.sides
    ),
    shots: Annotated[int, typer.Option(help="K")] = _DEFAULTS.shots,
    threads: Annotated[int | None, typer.Option(help="CPU threads (default: all)")] = None,
    repeats: Annotated[int, typer.Option(help="timed runs per size")] = _DEFAULTS.repeats,
    json_path: Annotated[Path | None, typer.Option("--json", help="write the report")] = None,
    markdown: Annotated[Path | None, typer.Option(help="results file (.md)")] = None,
) -> None:
    """The CCM's share of an ONNX Runtime episode and its scaling with the feature size."""
    check_report_outputs(json_path, markdown, {"--model": [model]})
    options = CcmOptions(
        episode_graph=None if model is None else model / "dpnet.onnx",
        sides=_sides(sides),
        shots=shots,
        threads=threads,
        repeats=repeats,
    )
    report = run_ccm_micro(options)
    stdout_console.print(render_ccm_table(report))
    if json_path is not None:
        atomic_write_text(json_path, json.dumps(ccm_report_to_dict(report), indent=2) + "\n")
    if markdown is not None:
        command = f"python -m dpnet_bench.ccm_micro {shlex.join(sys.argv[1:])}"
        atomic_write_text(markdown, render_ccm_markdown(report, command))


def _sides(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(side) for side in text.split(","))
    except ValueError as exc:
        raise OptionError(f"--sides must be integers separated by commas, got {text!r}") from exc


def main() -> None:
    """Entry point of ``python -m dpnet_bench.ccm_micro``."""
    run_app(app)


if __name__ == "__main__":
    main()
