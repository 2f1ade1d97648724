"""``dpnet-eval``: a checkpoint on fixed episodes: per-class IoU, mIoU (both protocols), FB-IoU."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

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
from dpnet.eval.evaluate import EvalOptions, EvalRequest, EvalResult, evaluate_checkpoint
from dpnet_runtime.console import make_app, make_progress, run_app, stdout_console
from dpnet_runtime.errors import OptionError
from dpnet_runtime.fileio import atomic_write_text
from dpnet_runtime.outputs import JSON_FORMATS, check_file_output

__all__ = ["app", "main"]

app = make_app(
    name="dpnet-eval",
    help="Evaluate a DPNet checkpoint on fixed few-shot episodes.",
)

# Defaults live once, in EvalRequest / EvalOptions; the CLI reads them from these instances.
_REQUEST = EvalRequest(ckpt=Path("best.pt"))
_OPTIONS = EvalOptions()
_DATA = _REQUEST.data_options


@app.command()
def command(
    ckpt: Annotated[Path, typer.Option(help="Checkpoint written by dpnet-train.")],
    dataset: DatasetOption = _REQUEST.dataset,
    data_root: DataRootOption = _REQUEST.data_root,
    coco_split: CocoSplitOption = _DATA.coco_split,
    splits_dir: SplitsDirOption = _DATA.splits_dir,
    skip_missing: SkipMissingOption = _DATA.skip_missing,
    val_classes: ValClassesOption = None,
    folds: FoldsOption = _DATA.folds,
    fold: Annotated[
        int | None,
        typer.Option(help="Test fold 0..3 (default: the checkpoint's, if same dataset)."),
    ] = _REQUEST.fold,
    shots: Annotated[int, typer.Option(help="K supports per episode (1 or 5).")] = _REQUEST.shots,
    episodes: Annotated[int, typer.Option(help="Test episodes.")] = _REQUEST.episodes,
    seed: Annotated[int, typer.Option(help="Episode seed (same seed, same episodes).")] = (
        _REQUEST.seed
    ),
    scales: Annotated[
        str, typer.Option(help="Inference scales, comma-separated, e.g. 0.7,1.0,1.3.")
    ] = ",".join(str(scale) for scale in _OPTIONS.scales),
    beta: Annotated[
        float | None, typer.Option(help="Discriminator threshold (default: config's, 0.2).")
    ] = _OPTIONS.beta,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = _REQUEST.device,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Also write the result as JSON here.")
    ] = None,
) -> None:
    """Evaluate a checkpoint at the labels' original size.

    Example: dpnet-eval --ckpt run/best.pt --dataset synthetic --fold 0 --shots 1 --episodes 1000
    """
    check_file_output(
        "--json", json_path, JSON_FORMATS, {"--ckpt": [ckpt]}, trees={"--data-root": [data_root]}
    )
    data_options = dataset_flags(
        coco_split=coco_split, splits_dir=splits_dir, skip_missing=skip_missing,
        val_classes=val_classes, folds=folds,
    )  # fmt: skip
    request = EvalRequest(
        ckpt=ckpt, dataset=dataset, data_root=data_root, data_options=data_options, fold=fold,
        shots=shots, episodes=episodes, seed=seed, device=device,
        options=EvalOptions(_parse_scales(scales), beta),
    )  # fmt: skip
    with make_progress(transient=True) as progress:
        task = progress.add_task("evaluating", total=episodes, status="")
        result = evaluate_checkpoint(
            request, lambda done, total: progress.update(task, completed=done, total=total)
        )
    stdout_console.print(_table(result, f"dpnet-eval: {ckpt} on {dataset}, seed {seed}"))
    if json_path is not None:
        atomic_write_text(json_path, json.dumps(result.to_dict(), indent=2) + "\n")


def _parse_scales(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise OptionError(f"--scales must be numbers separated by commas, got {text!r}") from exc


def _table(result: EvalResult, title: str) -> Table:
    table = Table(title=title)
    table.add_column("class")
    table.add_column("episodes", justify="right")
    table.add_column("IoU canet", justify="right")
    table.add_column("IoU pfenet", justify="right")
    for item in result.per_class:
        table.add_row(
            f"{item.class_id} {item.name}",
            str(item.episodes),
            f"{item.iou_canet:.1f}",
            f"{item.iou_pfenet:.1f}",
        )
    table.add_section()
    table.add_row(
        "mIoU", str(result.episodes), f"{result.miou_canet:.1f}", f"{result.miou_pfenet:.1f}"
    )
    table.add_row("FB-IoU", "", "", f"{result.fbiou:.1f}")
    table.caption = (
        f"scales {', '.join(str(s) for s in result.scales)}, beta {result.beta}, "
        f"{result.seconds:.1f} s"
    )
    return table


def main() -> None:
    """Console-script entry point."""
    run_app(app)
