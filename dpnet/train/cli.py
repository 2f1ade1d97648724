"""``dpnet-train``: episodic training of DPNet, a thin typer app over
:func:`dpnet.train.loop.train`.

Under ``torchrun --nproc_per_node N -m dpnet.train ...`` every rank runs this command; only
rank 0 draws the progress bar and the summary.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, cast

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
from dpnet.train.loop import TrainProgress, TrainResult, train
from dpnet.train.options import ABLATION_VARIANTS, Optimizer, TrainOptions
from dpnet_runtime.console import make_app, make_progress, run_app, stdout_console

__all__ = ["app", "main"]

app = make_app(
    name="dpnet-train",
    help="Train DPNet episodically on the synthetic benchmark, PASCAL-5i, COCO-20i or a folder.",
)


# Defaults live once, in TrainOptions; the CLI reads them from this instance.
_DEFAULTS = TrainOptions(out=Path("run"))
_DATA = _DEFAULTS.data_options


@app.command()
def command(
    out: Annotated[Path, typer.Option(help="Run folder for last.pt and best.pt.")],
    dataset: DatasetOption = _DEFAULTS.dataset,
    data_root: DataRootOption = _DEFAULTS.data_root,
    coco_split: CocoSplitOption = _DATA.coco_split,
    splits_dir: SplitsDirOption = _DATA.splits_dir,
    skip_missing: SkipMissingOption = _DATA.skip_missing,
    val_classes: ValClassesOption = None,
    folds: FoldsOption = _DATA.folds,
    fold: Annotated[
        int, typer.Option(help="Test fold 0..3 (0..N-1 with --folds N); training uses the others.")
    ] = _DEFAULTS.fold,
    shots: Annotated[int, typer.Option(help="K supports per episode.")] = _DEFAULTS.shots,
    preset: Annotated[
        str | None,
        typer.Option(
            help="Model preset: tiny or paper (default: paper for pascal/coco, tiny for synthetic)."
        ),
    ] = _DEFAULTS.config,
    ablation_variant: Annotated[
        str, typer.Option(help=f"Ablation variant: {', '.join(ABLATION_VARIANTS)} (ccm = DPNet).")
    ] = _DEFAULTS.variant,
    steps: Annotated[
        int | None, typer.Option(help="Optimisation steps (overrides --epochs).")
    ] = _DEFAULTS.steps,
    epochs: Annotated[
        int | None, typer.Option(help="Passes over the training episodes.")
    ] = _DEFAULTS.epochs,
    batch_size: Annotated[
        int | None,
        typer.Option(help="Episodes per step and rank (default: 4 pascal/synthetic, 8 coco)."),
    ] = _DEFAULTS.batch_size,
    optimizer: Annotated[
        str | None,
        typer.Option(
            help="sgd (the paper's) or adamw (default: sgd pascal/coco, adamw synthetic)."
        ),
    ] = _DEFAULTS.optimizer,
    lr: Annotated[
        float | None,
        typer.Option(help="Learning rate (default: 0.0025 pascal, 0.005 coco, 1e-3 synthetic)."),
    ] = _DEFAULTS.lr,
    backbone_weights: Annotated[
        Path | None, typer.Option(help="torchvision resnet50-*.pth for the frozen trunk.")
    ] = _DEFAULTS.backbone_weights,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out from last.pt.")] = (
        _DEFAULTS.resume
    ),
    init: Annotated[
        Path | None,
        typer.Option(help="Fine-tune: start a new run from this checkpoint's weights."),
    ] = _DEFAULTS.init,
    seed: Annotated[int, typer.Option(help="Run seed.")] = _DEFAULTS.seed,
    val_every: Annotated[
        int | None, typer.Option(help="Validate and write last.pt every N steps (0: at the end).")
    ] = _DEFAULTS.val_every,
    val_episodes: Annotated[
        int, typer.Option(help="Validation episodes of the fold's classes (0: none).")
    ] = _DEFAULTS.val_episodes,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = _DEFAULTS.device,
    threads: Annotated[
        int | None, typer.Option(help="torch CPU threads per process.")
    ] = _DEFAULTS.threads,
) -> None:
    """Train DPNet; writes OUT/last.pt (every validation) and OUT/best.pt (best mIoU).

    Example: dpnet-train --dataset synthetic --fold 0 --preset tiny --steps 1500 --out run/

    Fine-tune a PASCAL model on your folder: dpnet-train --dataset folder --data-root mine/
    --init run-pascal/best.pt --steps 500 --out run-mine/
    """
    data_options = dataset_flags(
        coco_split=coco_split, splits_dir=splits_dir, skip_missing=skip_missing,
        val_classes=val_classes, folds=folds,
    )  # fmt: skip
    options = TrainOptions(
        out=out, dataset=dataset, data_root=data_root, data_options=data_options, fold=fold,
        shots=shots, config=preset, variant=ablation_variant, steps=steps, epochs=epochs,
        batch_size=batch_size, lr=lr,
        optimizer=cast("Optimizer | None", optimizer),  # checked by TrainOptions
        backbone_weights=backbone_weights, resume=resume, init=init, seed=seed,
        val_every=val_every, val_episodes=val_episodes, device=device, threads=threads,
    )  # fmt: skip
    with make_progress() as progress:
        task = progress.add_task("training", total=None, status="")

        def report(update: TrainProgress) -> None:
            loss = update.losses
            status = (
                f"loss {loss.total:.3f} (seg {loss.seg:.3f} aux {loss.aux:.3f} dis {loss.dis:.3f})"
            )
            if update.validation is not None:
                status += f" val mIoU {update.validation.miou_pfenet:.1f}"
            progress.update(task, completed=update.step, total=update.total_steps, status=status)

        result = train(options, report)
    if result.rank == 0:
        _print_summary(result)


def _print_summary(result: TrainResult) -> None:
    table = Table(title=f"dpnet-train: {result.out}")
    table.add_column("step", justify="right")
    table.add_column("loss", justify="right")
    table.add_column("seg / aux / dis", justify="right")
    table.add_column("val mIoU pfenet / canet", justify="right")
    validations = {record.step: record for record in result.validations}
    for record in result.losses:
        if record.step not in validations and record is not result.losses[-1]:
            continue
        validation = validations.get(record.step)
        table.add_row(
            str(record.step),
            f"{record.total:.3f}",
            f"{record.seg:.3f} / {record.aux:.3f} / {record.dis:.3f}",
            "" if validation is None
            else f"{validation.miou_pfenet:.1f} / {validation.miou_canet:.1f}",
        )  # fmt: skip
    stdout_console.print(table)
    best = result.best_checkpoint or result.last_checkpoint
    stdout_console.print(
        f"{result.steps}/{result.total_steps} steps, lr {result.lr}, batch {result.batch_size} x "
        f"{result.world_size} rank(s), {result.steps_per_second:.2f} steps/s; checkpoint {best}"
    )


def main() -> None:
    """Console-script entry point."""
    run_app(app)
