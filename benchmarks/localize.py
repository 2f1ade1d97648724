"""Where a low-precision graph leaves the FP32 one: a layer-wise divergence finder.

``python -m dpnet_bench.localize --model DIR --precision int8|fp16`` does for dpnet what
Polygraphy's ``--onnx-outputs mark all`` comparison does: every intermediate tensor that the
FP32 graph and its low-precision copy (``contract.FORMATS``: ``ort-fp16``, ``ort-int8``) both
compute becomes a graph output, both graphs run in ONNX Runtime on the same pre-processed
episodes, and each tensor gets a divergence:

- float tensors: the relative L2 error ``||low - fp32|| / ||fp32||`` pooled over the episodes
  (squared norms summed, so large activations weigh more);
- integer and boolean tensors (ArgMax indices, masks, the CCM's sets): the share of elements
  that differ.

The report lists, in the FP32 graph's topological order, the first nodes whose output leaves
the tolerance, and per module scope (``model.backbone.layer3``, ``model.ccm``...) the largest
divergence and the first node past the tolerance: that is where precision is lost, and what
``dpnet_export.onnx_to_int8.int8_float_nodes`` keeps in float.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Final

import numpy as np
import onnx
import typer
from rich.table import Table

from dpnet.data import DatasetOptions, build_dataset
from dpnet.data.cli_options import (
    CocoSplitOption,
    DataRootOption,
    DatasetOption,
    FoldsOption,
    SkipMissingOption,
    SplitsDirOption,
    ValClassesOption,
    dataset_flags,
)
from dpnet_bench.localize_ccm import SimilarityContribution, SimilarityProbe, render_similarity
from dpnet_bench.marked_outputs import (
    dequantized,
    elem_type,
    error_terms,
    marked_session,
    shared_tensors,
)
from dpnet_export.calibration import episode_feed, role_feeds
from dpnet_export.onnx_to_fp16 import node_scopes
from dpnet_runtime.console import make_app, make_progress, run_app, stdout_console
from dpnet_runtime.contract import (
    EPISODE,
    FORMATS,
    GRAPHS,
    META_INPUT_SIZE,
    SUPPORT,
    Format,
    find_format,
)
from dpnet_runtime.errors import ModelFileError, OptionError, one_line
from dpnet_runtime.fileio import atomic_write_text
from dpnet_runtime.outputs import JSON_FORMATS, check_file_output

__all__ = [
    "DEFAULT_TOLERANCE",
    "LocalizeOptions",
    "LocalizeReport",
    "TensorDivergence",
    "app",
    "localize",
    "localize_report_to_dict",
    "main",
    "render_localize",
]

DEFAULT_TOLERANCE: Final = {"fp16": 0.01, "int8": 0.1}
"""Default divergence tolerance per precision (relative L2 error, or share of differing values)."""
_FLOAT_TYPES: Final = frozenset({onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16})


@dataclass(frozen=True)
class LocalizeOptions:
    """What to compare; ``python -m dpnet_bench.localize`` flags are kebab-case twins.

    Args:
        artifacts: an export directory with the FP32 graphs and their low-precision copies.
        precision: ``int8`` or ``fp16``.
        graph: the role to compare (``episode``, ``support``, ``query``).
        dataset: episodes from ``synthetic``, ``pascal``, ``coco`` or ``folder`` (``val``
            split).
        root: dataset folder (not for ``synthetic``).
        data_options: the dataset-specific options (COCO split, episode lists, folder classes).
        fold: the fold.
        episodes: how many episodes to run.
        seed: episode seed.
        tolerance: divergence above which a node is reported; ``None``: the precision's
            :data:`DEFAULT_TOLERANCE`.
    """

    artifacts: Path
    precision: str = "int8"
    graph: str = EPISODE
    dataset: str = "synthetic"
    root: Path | None = None
    data_options: DatasetOptions = field(default_factory=DatasetOptions)
    fold: int = 0
    episodes: int = 4
    seed: int = 0
    tolerance: float | None = None


@dataclass(frozen=True)
class TensorDivergence:
    """One compared tensor.

    Attributes:
        node: the FP32 node that produces it.
        op_type: that node's op.
        scope: its module path (``model.backbone.layer3``), ``""`` at the top level.
        tensor: the tensor name.
        divergence: relative L2 error (float) or share of differing values (integer, bool).
        exact: True for integer and boolean tensors (divergence is a mismatch share).
    """

    node: str
    op_type: str
    scope: str
    tensor: str
    divergence: float
    exact: bool


@dataclass(frozen=True)
class LocalizeReport:
    """All compared tensors of one graph, in the FP32 graph's topological order, and the CCM
    similarity's share of the divergence of its matches (``None`` for a graph without CCM)."""

    options: LocalizeOptions
    fp32_file: str
    low_file: str
    tolerance: float
    tensors: tuple[TensorDivergence, ...] = field(default=())
    similarity: SimilarityContribution | None = None

    def first_beyond(self, count: int) -> tuple[TensorDivergence, ...]:
        """The first ``count`` tensors (topological order) whose divergence passes the tolerance."""
        beyond = [item for item in self.tensors if item.divergence > self.tolerance]
        return tuple(beyond[:count])

    def by_scope(self) -> list[tuple[str, TensorDivergence, TensorDivergence | None]]:
        """Per scope, in order of first appearance: the worst tensor and the first one past
        the tolerance (``None`` when none is)."""
        scopes: dict[str, list[TensorDivergence]] = {}
        for item in self.tensors:
            scopes.setdefault(item.scope, []).append(item)
        return [
            (
                scope,
                max(items, key=lambda item: item.divergence),
                next((item for item in items if item.divergence > self.tolerance), None),
            )
            for scope, items in scopes.items()
        ]


def localize(
    options: LocalizeOptions, progress: Callable[[int, int], None] | None = None
) -> LocalizeReport:
    """Compare every shared intermediate tensor of the FP32 graph and its low-precision copy.

    Args:
        options: see :class:`LocalizeOptions`.
        progress: called as ``progress(done, total)`` after each episode.

    Raises:
        InputError: an unknown precision or graph role, episodes < 1.
        ModelFileError: a graph is missing or unreadable.
        DatasetError: the dataset cannot be read.
    """
    low_format = _low_format(options)
    if options.graph not in GRAPHS or options.episodes < 1:
        raise OptionError(
            f"--graph must be one of {', '.join(GRAPHS)} and --episodes >= 1, "
            f"got {options.graph!r} and {options.episodes}"
        )
    fp32_path = options.artifacts / FORMATS["ort"].file_name(options.graph)
    low_path = options.artifacts / low_format.file_name(options.graph)
    fp32, low = _load(fp32_path, low_format.make), _load(low_path, low_format.make)
    shared = shared_tensors(fp32, low)
    seen = dequantized(low, shared)
    probe = SimilarityProbe.build(fp32, low)
    fp32_extra, low_extra = probe.fetches() if probe is not None else ([], [])
    fetch = list(dict.fromkeys([*shared, *fp32_extra])), list(dict.fromkeys([*seen, *low_extra]))
    fp32_session, low_session = marked_session(fp32, fetch[0]), marked_session(low, fetch[1])
    sums = np.zeros((len(shared), 2))
    episodes = _episode_feeds(options, _input_size(fp32))
    support = _load(options.artifacts / FORMATS["ort"].file_name(SUPPORT), FORMATS["ort"].make)
    feeds = role_feeds(episodes, options.graph, support)
    for done, graph_feed in enumerate(feeds, start=1):
        ours = dict(zip(fetch[0], fp32_session.run(fetch[0], graph_feed), strict=True))
        theirs = dict(zip(fetch[1], low_session.run(fetch[1], graph_feed), strict=True))
        sums += [error_terms(ours[a], theirs[b]) for a, b in zip(shared, seen, strict=True)]
        if probe is not None:
            probe.add([ours[name] for name in fp32_extra], [theirs[name] for name in low_extra])
        if progress is not None:
            progress(done, len(feeds))
    producers = {name: node for node in fp32.graph.node for name in node.output}
    tensors = []
    for name, (error, norm) in zip(shared, sums, strict=True):
        node = producers[name]
        exact = elem_type(fp32, name) not in _FLOAT_TYPES
        divergence = error / norm if exact else float(np.sqrt(error / max(norm, 1e-30)))
        scope = ".".join(node_scopes(node))
        tensors.append(TensorDivergence(node.name, node.op_type, scope, name, divergence, exact))
    tolerance = options.tolerance
    if tolerance is None:
        tolerance = DEFAULT_TOLERANCE[options.precision]
    similarity = probe.result() if probe is not None else None
    return LocalizeReport(
        options, fp32_path.name, low_path.name, tolerance, tuple(tensors), similarity
    )


def _low_format(options: LocalizeOptions) -> Format:
    if options.precision not in DEFAULT_TOLERANCE:
        raise OptionError(
            f"--precision must be one of {', '.join(DEFAULT_TOLERANCE)}, got {options.precision!r}"
        )
    return find_format("ort", options.precision)


def _load(path: Path, make: str) -> onnx.ModelProto:
    if not path.is_file():
        raise ModelFileError(f"{path} does not exist; create it with {make}")
    try:
        return onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    except Exception as exc:  # onnx raises DecodeError, ValidationError and others
        raise ModelFileError(
            f"{path} is not a readable ONNX graph ({one_line(exc, limit=200)}); re-export it"
        ) from exc


def _input_size(model: onnx.ModelProto) -> int:
    values = {prop.key: prop.value for prop in model.metadata_props}
    if META_INPUT_SIZE not in values:
        raise ModelFileError(f"the graph has no {META_INPUT_SIZE!r} metadata; re-export it")
    return int(values[META_INPUT_SIZE])


def _episode_feeds(options: LocalizeOptions, size: int) -> list[dict[str, np.ndarray]]:
    dataset = build_dataset(
        options.dataset,
        root=options.root,
        fold=options.fold,
        split="val",
        shots=1,
        seed=options.seed,
        episodes=options.episodes,
        **options.data_options.keywords(options.dataset),
    )
    return [episode_feed(dataset[i], size, raw_input=False) for i in range(len(dataset))]


def render_localize(report: LocalizeReport, first: int = 10) -> list[Table]:
    """The first ``first`` nodes past the tolerance, the per-scope summary and, for a graph
    with the CCM, its similarity's share (:mod:`dpnet_bench.localize_ccm`)."""
    title = (
        f"{report.low_file} vs {report.fp32_file}: first nodes past divergence "
        f"{report.tolerance:g} ({report.options.episodes} episodes)"
    )
    nodes = Table(title=title)
    for column in ("node", "op", "scope", "divergence"):
        nodes.add_column(column, overflow="fold")
    for item in report.first_beyond(first):
        nodes.add_row(item.node, item.op_type, item.scope, _divergence(item))
    scopes = Table(title="per scope: worst tensor and first node past the tolerance")
    for column in ("scope", "tensors", "worst", "worst node", "first past"):
        scopes.add_column(column, overflow="fold")
    counts: dict[str, int] = {}
    for item in report.tensors:
        counts[item.scope] = counts.get(item.scope, 0) + 1
    for scope, worst, first_past in report.by_scope():
        scopes.add_row(
            scope or "(top level)",
            str(counts[scope]),
            _divergence(worst),
            f"{worst.node} ({worst.op_type})",
            "-" if first_past is None else f"{first_past.node} ({first_past.op_type})",
        )
    similarity = [] if report.similarity is None else [render_similarity(report.similarity)]
    return [nodes, scopes, *similarity]


def localize_report_to_dict(report: LocalizeReport) -> dict[str, Any]:
    """JSON-ready form of the report: options, files, tolerance and every tensor."""
    data = dataclasses.asdict(report)
    data["options"] = {key: str(value) for key, value in data["options"].items()}
    return data


def _divergence(item: TensorDivergence) -> str:
    return f"{100 * item.divergence:.2f} % differ" if item.exact else f"{item.divergence:.4f}"


app = make_app(
    name="python -m dpnet_bench.localize",
    help="Where a low-precision graph leaves its FP32 graph, node by node (all outputs marked).",
)
_DEFAULTS = LocalizeOptions(artifacts=Path("out"))
_DATA = DatasetOptions()


@app.command()
def command(
    model: Annotated[Path, typer.Option(help="export directory (FP32 and low-precision)")],
    precision: Annotated[str, typer.Option(help="int8 or fp16")] = _DEFAULTS.precision,
    graph: Annotated[str, typer.Option(help="episode, support or query")] = _DEFAULTS.graph,
    dataset: DatasetOption = _DEFAULTS.dataset,
    data_root: DataRootOption = _DEFAULTS.root,
    coco_split: CocoSplitOption = _DATA.coco_split,
    splits_dir: SplitsDirOption = _DATA.splits_dir,
    skip_missing: SkipMissingOption = _DATA.skip_missing,
    val_classes: ValClassesOption = None,
    folds: FoldsOption = _DATA.folds,
    fold: Annotated[int, typer.Option(help="fold 0..3 (val split)")] = _DEFAULTS.fold,
    episodes: Annotated[int, typer.Option(help="episodes to compare on")] = _DEFAULTS.episodes,
    seed: Annotated[int, typer.Option(help="episode seed")] = _DEFAULTS.seed,
    tolerance: Annotated[
        float | None,
        typer.Option(help="divergence to report (default: int8 0.1, fp16 0.01)"),
    ] = None,
    first: Annotated[int, typer.Option(help="how many of the first diverging nodes")] = 10,
    json_path: Annotated[Path | None, typer.Option("--json", help="write every tensor")] = None,
) -> None:
    """Where a low-precision graph leaves its FP32 graph, node by node (all outputs marked)."""
    data_options = dataset_flags(
        coco_split=coco_split,
        splits_dir=splits_dir,
        skip_missing=skip_missing,
        val_classes=val_classes,
        folds=folds,
    )
    check_file_output(
        "--json", json_path, JSON_FORMATS, {"--model": [model]}, trees={"--data-root": [data_root]}
    )
    options = LocalizeOptions(
        artifacts=model,
        precision=precision,
        graph=graph,
        dataset=dataset,
        root=data_root,
        data_options=data_options,
        fold=fold,
        episodes=episodes,
        seed=seed,
        tolerance=tolerance,
    )
    with make_progress() as progress:
        task = progress.add_task("episodes", total=episodes, status="")
        report = localize(options, lambda done, _: progress.update(task, completed=done))
    for table in render_localize(report, first):
        stdout_console.print(table)
    if json_path is not None:
        atomic_write_text(json_path, json.dumps(localize_report_to_dict(report), indent=2) + "\n")


def main() -> None:
    """Entry point of ``python -m dpnet_bench.localize``."""
    run_app(app)


if __name__ == "__main__":
    main()
