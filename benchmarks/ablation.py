"""The paper's ablations (Tables 3 and 4) on the embedded synthetic benchmark.

Every variant of :data:`dpnet.train.options.ABLATION_VARIANTS` is trained with the same budget,
seed, data and optimiser, then evaluated on the same held-out episodes; the result is a
markdown table with the exact command, library versions and hardware::

    python -m dpnet_bench.ablation --steps 400 --out benchmarks/results/ablation_synthetic.md
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import shlex
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import torch
import typer

from dpnet import __version__
from dpnet.checkpoint import load_model
from dpnet.data import build_dataset
from dpnet.eval.evaluate import EvalResult, evaluate
from dpnet.train.loop import TrainResult, train
from dpnet.train.options import ABLATION_VARIANTS, TrainOptions
from dpnet_runtime.console import make_app, run_app, stderr_console, stdout_console
from dpnet_runtime.errors import OptionError
from dpnet_runtime.fileio import atomic_write_text
from dpnet_runtime.outputs import MARKDOWN_FORMATS, output_format

__all__ = [
    "AblationOptions",
    "AblationRow",
    "app",
    "main",
    "run_ablation",
    "to_markdown",
]


@dataclass(frozen=True)
class AblationOptions:
    """The shared budget of every variant.

    Args:
        variants: keys of ``ABLATION_VARIANTS``, in table order.
        steps: training steps per variant.
        fold: synthetic fold (train on the others, evaluate on its classes).
        shots: K.
        seed: training seed (the same for every variant).
        episodes: held-out evaluation episodes (seed 0, the ``dpnet-eval`` default).
        config: model preset.
        threads: torch CPU threads.
        work: folder for the variants' checkpoints; ``None`` uses a temporary folder.
    """

    variants: tuple[str, ...] = tuple(ABLATION_VARIANTS)
    steps: int = 400
    fold: int = 0
    shots: int = 1
    seed: int = 0
    episodes: int = 200
    config: str = "tiny"
    threads: int = 2
    work: Path | None = None

    def __post_init__(self) -> None:
        unknown = [variant for variant in self.variants if variant not in ABLATION_VARIANTS]
        if unknown or not self.variants:
            raise OptionError(
                f"unknown or no ablation variants {unknown}; choose from {list(ABLATION_VARIANTS)}"
            )


@dataclass(frozen=True)
class AblationRow:
    """One trained and evaluated variant."""

    variant: str
    training: TrainResult
    evaluation: EvalResult


def run_ablation(
    options: AblationOptions, progress: Callable[[str], None] | None = None
) -> tuple[AblationRow, ...]:
    """Train and evaluate every variant with the same budget, seed and episodes.

    Args:
        options: see :class:`AblationOptions`.
        progress: optional callback with a one-line status per variant.
    """
    with tempfile.TemporaryDirectory(prefix="dpnet-ablation-") as scratch:
        work = Path(options.work) if options.work is not None else Path(scratch)
        episodes = build_dataset(
            "synthetic", root=None, fold=options.fold, split="val", shots=options.shots, seed=0,
            episodes=options.episodes,
        )  # fmt: skip
        rows = []
        for variant in options.variants:
            if progress is not None:
                progress(f"training {variant} ({options.steps} steps)")
            training = train(
                TrainOptions(
                    out=work / variant, fold=options.fold, shots=options.shots,
                    config=options.config, variant=variant, steps=options.steps,
                    seed=options.seed, val_every=0, val_episodes=0, threads=options.threads,
                    pretrained_backbone=False, device="cpu", resume=False,
                )
            )  # fmt: skip
            model, _ = load_model(training.last_checkpoint)
            evaluation = evaluate(model, episodes)
            if progress is not None:
                progress(f"{variant}: mIoU {evaluation.miou_pfenet:.1f} (pfenet)")
            rows.append(AblationRow(variant, training, evaluation))
    return tuple(rows)


def to_markdown(rows: Sequence[AblationRow], options: AblationOptions, command: str) -> str:
    """The result table with the command, versions and hardware that produced it."""
    lines = [
        "# DPNet ablation on the synthetic benchmark (paper Tables 3 and 4)",
        "",
        f"Command: `{command}`",
        "",
        f"Fold {options.fold}, {options.shots}-shot, `{options.config}` config, "
        f"{options.steps} training steps per variant (seed {options.seed}, same episodes and "
        f"optimiser for all), evaluated on {options.episodes} held-out episodes of the fold's "
        "unseen classes (seed 0) at the labels' original size, single scale.",
        "",
        "| variant | PIM | MSF | pseudo-prototype | mIoU pfenet | mIoU canet | FB-IoU "
        "| final loss | train s |",
        "|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        config = row.training.config
        result = row.evaluation
        lines.append(
            f"| {row.variant} | {_mark(config.use_pim)} | {_mark(config.use_msf)} "
            f"| {config.pseudo_prototype} | {result.miou_pfenet:.1f} | {result.miou_canet:.1f} "
            f"| {result.fbiou:.1f} | {row.training.losses[-1].total:.3f} "
            f"| {row.training.seconds:.0f} |"
        )
    lines += [
        "",
        f"dpnet {__version__}, torch {torch.__version__}, Python {platform.python_version()}, "
        f"{platform.machine()} with {os.cpu_count()} CPU cores ({options.threads} threads), "
        f"{dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}.",
        "",
    ]
    return "\n".join(lines)


def _mark(flag: bool) -> str:
    return "yes" if flag else "-"


app = make_app(
    name="python -m dpnet_bench.ablation",
    help="Train and evaluate the paper's ablation variants on the synthetic benchmark.",
)
_DEFAULTS = AblationOptions()


@app.command()
def command(
    out: Annotated[Path, typer.Option(help="Markdown file for the table.")] = Path(
        "ablation_synthetic.md"
    ),
    steps: Annotated[int, typer.Option(help="Training steps per variant.")] = _DEFAULTS.steps,
    variants: Annotated[str, typer.Option(help="Comma-separated variants.")] = ",".join(
        _DEFAULTS.variants
    ),
    fold: Annotated[int, typer.Option(help="Synthetic fold.")] = _DEFAULTS.fold,
    shots: Annotated[int, typer.Option(help="K.")] = _DEFAULTS.shots,
    seed: Annotated[int, typer.Option(help="Training seed.")] = _DEFAULTS.seed,
    episodes: Annotated[int, typer.Option(help="Evaluation episodes.")] = _DEFAULTS.episodes,
    threads: Annotated[int, typer.Option(help="torch CPU threads.")] = _DEFAULTS.threads,
    work: Annotated[
        Path | None, typer.Option(help="Keep the variants' checkpoints here.")
    ] = _DEFAULTS.work,
) -> None:
    """Train every variant with the same budget and write a markdown table to OUT."""
    output_format(out, "--out", MARKDOWN_FORMATS, "markdown")
    options = AblationOptions(
        variants=tuple(v.strip() for v in variants.split(",") if v.strip()), steps=steps,
        fold=fold, shots=shots, seed=seed, episodes=episodes, threads=threads, work=work,
    )  # fmt: skip
    rows = run_ablation(options, lambda message: stderr_console.log(message))
    argv = ["python", "-m", "dpnet_bench.ablation", *sys.argv[1:]]
    markdown = to_markdown(rows, options, shlex.join(argv))
    atomic_write_text(out, markdown)
    stdout_console.print(markdown, markup=False, highlight=False)


def main() -> None:
    """Entry point of ``python -m dpnet_bench.ablation``."""
    run_app(app)


if __name__ == "__main__":
    main()
