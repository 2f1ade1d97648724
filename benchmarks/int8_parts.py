"""Where the INT8 graphs' time goes, part by part, beside FP32's: the floor of the INT8 ratio.

``python -m dpnet_bench.int8_parts --model DIR --shots K`` runs the episode graph and the
cached-support query graph in FP32 (``ort``) and INT8 (``ort-int8``) on the same synthetic
episodes, the four sessions in turn episode after episode (wall-time p50, as ``dpnet-bench``
measures), then profiles each once with ONNX Runtime's per-node profiler and sums the kernel
time of each part:

- ``ccm similarity``: the CCM's similarity MatMul (and the QuantizeLinear of its keys);
- ``ccm argmax``: the CCM's two ArgMax, which read the scores in every flavour;
- ``ccm rest``: the cycle gather, the one-hot MatMul and the rest of the CCM;
- ``float islands``: what stays float outside the CCM
  (:func:`dpnet_export.onnx_to_int8.int8_float_nodes`: L2 norms, discriminator, PIM,
  classifier, the mask-only nodes);
- ``network``: everything else (trunk, MSF, decoder; in INT8 their QLinear kernels, the
  Q/DQ conversions and the layout transposes ONNX Runtime inserts).

The parts INT8 does not touch (``ccm argmax``, ``ccm rest``, ``float islands``) bound the INT8
/ FP32 ratio from below: :attr:`GraphParts.floor` is their INT8 kernel time over the FP32
wall-time p50, the ratio the graph would reach if the network and the similarity cost nothing.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Final

import numpy as np
import onnx
import typer
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
from dpnet_export.calibration import episode_feed, role_feeds
from dpnet_export.ccm_int8 import similarity_node, similarity_qdq_nodes
from dpnet_export.onnx_to_fp16 import CCM_SCOPE, node_scopes
from dpnet_export.onnx_to_int8 import int8_float_nodes
from dpnet_runtime.console import make_app, run_app, stdout_console
from dpnet_runtime.contract import EPISODE, FORMATS, META_INPUT_SIZE, QUERY, SUPPORT
from dpnet_runtime.errors import ModelFileError, OptionError
from dpnet_runtime.fileio import atomic_write_text
from dpnet_runtime.outputs import check_report_outputs

__all__ = [
    "PARTS",
    "GraphParts",
    "PartsOptions",
    "PartsReport",
    "app",
    "main",
    "node_parts",
    "parts_report_to_dict",
    "render_parts_markdown",
    "run_int8_parts",
]

PARTS: Final = ("network", "ccm similarity", "ccm argmax", "ccm rest", "float islands")
"""The parts, in report order (module docstring)."""
_UNTOUCHED: Final = ("ccm argmax", "ccm rest", "float islands")


@dataclass(frozen=True)
class PartsOptions:
    """What to measure.

    Args:
        artifacts: an export folder with the FP32 graphs and their INT8 copies
            (``--precision int8``).
        shots: K.
        episodes: timed episodes (synthetic, fold 0, ``val`` split, seed 0).
        threads: ONNX Runtime intra-op threads; ``None``: the cores this process may use.
        profile_runs: profiled runs per session (after one warm-up run).
    """

    artifacts: Path
    shots: int = 1
    episodes: int = 10
    threads: int | None = None
    profile_runs: int = 3


@dataclass(frozen=True)
class GraphParts:
    """One graph in FP32 and INT8.

    Attributes:
        role: ``episode`` or ``query``.
        fp32, int8: wall-time latency of the interleaved runs.
        fp32_parts_ms, int8_parts_ms: profiled kernel time per part (:data:`PARTS`), per run.
        ratio: INT8 p50 / FP32 p50.
        floor: INT8 kernel time of the untouched parts / FP32 p50 (module docstring).
    """

    role: str
    fp32: LatencyStats
    int8: LatencyStats
    fp32_parts_ms: dict[str, float]
    int8_parts_ms: dict[str, float]
    ratio: float
    floor: float


@dataclass(frozen=True)
class PartsReport:
    """Both graphs of one run, with the machine it ran on."""

    options: PartsOptions
    threads: int
    environment: dict[str, str]
    graphs: tuple[GraphParts, ...]


def node_parts(model: onnx.ModelProto) -> dict[str, str]:
    """Node name -> part (:data:`PARTS`) for the nodes of ``model`` outside ``network``."""
    parts: dict[str, str] = dict.fromkeys(int8_float_nodes(model), "float islands")
    for node in model.graph.node:
        if CCM_SCOPE in node_scopes(node):
            parts[node.name] = "ccm argmax" if node.op_type == "ArgMax" else "ccm rest"
    similarity = similarity_node(model)
    if similarity is not None:
        for name in (similarity.name, *similarity_qdq_nodes(model)):
            parts[name] = "ccm similarity"
    return parts


def run_int8_parts(options: PartsOptions) -> PartsReport:
    """Time and profile the episode and query graphs in FP32 and INT8 (module docstring).

    Raises:
        InputError: shots, episodes, threads or profile runs below 1.
        ModelFileError: a graph of the export is missing.
    """
    if min(options.shots, options.episodes, options.profile_runs, options.threads or 1) < 1:
        raise OptionError("shots, episodes, threads and profile runs must all be at least 1")
    threads = options.threads or len(os.sched_getaffinity(0))
    graphs = {
        (role, fmt): _load(options.artifacts / FORMATS[fmt].file_name(role))
        for role in (EPISODE, QUERY)
        for fmt in ("ort", "ort-int8")
    }
    feeds = _feeds(options, graphs[EPISODE, "ort"])
    sessions = {key: make_session(graph, threads) for key, graph in graphs.items()}
    samples: dict[tuple[str, str], list[int]] = {key: [] for key in sessions}
    for key, session in sessions.items():
        session.run(None, feeds[key[0]][0])  # warm-up
    for index in range(options.episodes):
        for key, session in sessions.items():
            feed = feeds[key[0]][index]
            samples[key].append(timed_call(lambda s=session, f=feed: s.run(None, f))[1])
    del sessions
    results = []
    for role in (EPISODE, QUERY):
        fp32, int8 = (latency_stats(samples[role, fmt]) for fmt in ("ort", "ort-int8"))
        fp32_parts, int8_parts = (
            _part_times(graphs[role, fmt], feeds[role][0], threads, options.profile_runs)
            for fmt in ("ort", "ort-int8")
        )
        untouched = sum(int8_parts[part] for part in _UNTOUCHED)
        ratio, floor = int8.p50_ms / fp32.p50_ms, untouched / fp32.p50_ms
        results.append(GraphParts(role, fp32, int8, fp32_parts, int8_parts, ratio, floor))
    return PartsReport(options, threads, describe_environment(), tuple(results))


def _load(path: Path) -> onnx.ModelProto:
    if not path.is_file():
        raise ModelFileError(
            f"{path} does not exist; export with dpnet-export onnx --precision int8"
        )
    return onnx.load(str(path))


def _feeds(
    options: PartsOptions, episode_graph: onnx.ModelProto
) -> dict[str, list[dict[str, np.ndarray]]]:
    size = int({p.key: p.value for p in episode_graph.metadata_props}[META_INPUT_SIZE])
    dataset = build_dataset(
        "synthetic", root=None, fold=0, split="val", shots=options.shots, seed=0,
        episodes=options.episodes,
    )  # fmt: skip
    episodes = [episode_feed(dataset[i], size, raw_input=False) for i in range(len(dataset))]
    support = _load(options.artifacts / FORMATS["ort"].file_name(SUPPORT))
    return {EPISODE: episodes, QUERY: role_feeds(episodes, QUERY, support)}


def _part_times(
    model: onnx.ModelProto, feed: dict[str, np.ndarray], threads: int, runs: int
) -> dict[str, float]:
    parts = node_parts(model)
    times = dict.fromkeys(PARTS, 0.0)
    for node, milliseconds in kernel_times_ms(model, feed, threads=threads, runs=runs).items():
        times[parts.get(node, "network")] += milliseconds
    return times


def parts_report_to_dict(report: PartsReport) -> dict[str, Any]:
    """JSON-ready form: options, environment, both graphs with their latency samples."""
    data = dataclasses.asdict(report)
    data["options"]["artifacts"] = str(report.options.artifacts)
    return data


def render_parts_table(report: PartsReport) -> Table:
    """Per graph and part: FP32 and INT8 kernel time; p50, ratio and floor in the last rows."""
    table = Table(
        title=f"INT8 vs FP32 by part, {report.options.shots}-shot, {report.threads} threads"
    )
    for column in _COLUMNS:
        table.add_column(column, justify="left" if column in ("graph", "part") else "right")
    for row in _rows(report):
        table.add_row(*row)
    return table


def render_parts_markdown(report: PartsReport, command: str) -> str:
    """A results file: command, hardware and load, the table and how to read it."""
    lines = [
        f"# INT8 vs FP32 by part (ONNX Runtime CPU, {report.options.shots}-shot)",
        "",
        f"Command: `{command}`",
        "",
        *environment_lines(report.environment, report.threads),
        "",
        "| " + " | ".join(_COLUMNS) + " |",
        "|" + "---|" * len(_COLUMNS),
        *("| " + " | ".join(row) + " |" for row in _rows(report)),
        "",
        "Parts are profiled kernel times per run (ONNX Runtime's profiler, one session per "
        "graph after the timed runs); p50 is the wall time of the interleaved runs. The floor "
        "is the INT8 kernel time of the parts INT8 leaves as they are (ccm argmax, ccm rest, "
        "float islands) over the FP32 p50: the INT8 / FP32 ratio if the network and the "
        "similarity took no time at all.",
    ]
    return "\n".join(lines) + "\n"


_COLUMNS: Final = ("graph", "part", "FP32 ms", "INT8 ms", "INT8 / FP32")


def _rows(report: PartsReport) -> list[list[str]]:
    rows = []
    for graph in report.graphs:
        for part in PARTS:
            fp32, int8 = graph.fp32_parts_ms[part], graph.int8_parts_ms[part]
            ratio = f"{int8 / fp32:.3f}" if fp32 > 0 else "-"
            rows.append([graph.role, part, f"{fp32:.1f}", f"{int8:.1f}", ratio])
        fp32_sum, int8_sum = sum(graph.fp32_parts_ms.values()), sum(graph.int8_parts_ms.values())
        kernels = f"{int8_sum / fp32_sum:.3f}"
        wall = (f"{graph.fp32.p50_ms:.1f}", f"{graph.int8.p50_ms:.1f}", f"**{graph.ratio:.3f}**")
        rows += [
            [graph.role, "all kernels", f"{fp32_sum:.1f}", f"{int8_sum:.1f}", kernels],
            [graph.role, "wall p50", *wall],
            [graph.role, "floor (untouched parts / FP32 p50)", "", "", f"{graph.floor:.3f}"],
        ]
    return rows


app = make_app(
    name="python -m dpnet_bench.int8_parts",
    help="Where the INT8 graphs' time goes, part by part, beside FP32's (the INT8 floor).",
)


@app.command()
def command(
    model: Annotated[
        Path, typer.Option("--model", help="export folder with the INT8 copies (--precision int8)")
    ],
    shots: Annotated[int, typer.Option(help="K")] = 1,
    episodes: Annotated[int, typer.Option(help="timed episodes")] = 10,
    threads: Annotated[int | None, typer.Option(help="CPU threads (default: all)")] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="write the report")] = None,
    markdown: Annotated[Path | None, typer.Option(help="results file (.md)")] = None,
) -> None:
    """Where the INT8 graphs' time goes, part by part, beside FP32's (the INT8 floor)."""
    check_report_outputs(json_path, markdown, {"--model": [model]})
    options = PartsOptions(model, shots, episodes, threads)
    report = run_int8_parts(options)
    stdout_console.print(render_parts_table(report))
    if json_path is not None:
        atomic_write_text(json_path, json.dumps(parts_report_to_dict(report), indent=2) + "\n")
    if markdown is not None:
        command = f"python -m dpnet_bench.int8_parts {shlex.join(sys.argv[1:])}"
        atomic_write_text(markdown, render_parts_markdown(report, command))


def main() -> None:
    """Entry point of ``python -m dpnet_bench.int8_parts``."""
    run_app(app)


if __name__ == "__main__":
    main()
