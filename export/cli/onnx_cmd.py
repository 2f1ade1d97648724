"""``dpnet-export onnx``: a checkpoint -> ``dpnet.onnx`` and the support/query pair."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from dpnet.data import DatasetOptions
from dpnet.data.cli_options import (
    CocoSplitOption,
    DataRootOption,
    FoldsOption,
    SkipMissingOption,
    SplitsDirOption,
    ValClassesOption,
    dataset_flags,
)
from dpnet_runtime.console import stderr_console, stdout_console

__all__ = ["command"]

_DATA = DatasetOptions()


def command(
    ckpt: Annotated[
        Path,
        typer.Option("--ckpt", help="Checkpoint written by dpnet-train (dpnet-checkpoint format)."),
    ],
    out: Annotated[
        Path,
        typer.Option("--out", help="Folder for the graphs; created if missing, files replaced."),
    ] = Path("out"),
    size: Annotated[
        int | None,
        typer.Option(
            help="Input side H = W baked into the graphs (default: the checkpoint's input size)."
        ),
    ] = None,
    max_shots: Annotated[
        int | None,
        typer.Option(
            "--max-shots", help="Largest K the graphs accept; K is dynamic over 1..K (default: 5)."
        ),
    ] = None,
    fp16: Annotated[
        bool,
        typer.Option(
            "--fp16",
            help="Also write *_fp16.onnx mixed-precision copies (CCM, L2 norms, z-score, "
            "argmax stay FP32; FP32 inputs and outputs), for a strongly typed TensorRT build.",
        ),
    ] = False,
    int8: Annotated[
        bool,
        typer.Option(
            "--int8",
            help="Also write calibrated INT8 copies: *_int8.onnx (ONNX Runtime CPU, U8S8) and "
            "*_int8_trt.onnx (TensorRT, symmetric S8S8); the CCM (its similarity MatMul "
            "aside, see --int8-ccm), L2 norms, discriminator, PIM, classifier and argmax stay "
            "float.",
        ),
    ] = False,
    int8_ccm: Annotated[
        bool | None,
        typer.Option(
            "--int8-ccm/--no-int8-ccm",
            help="With --int8: run the CCM's similarity MatMul in INT8 too (default; "
            "MatMulInteger on ONNX Runtime, S8S8 Q/DQ for TensorRT; the ArgMax stay as they "
            "are). --no-int8-ccm keeps the whole CCM float: slower, the C' set closer to FP32.",
            show_default=False,
        ),
    ] = None,
    calib_dataset: Annotated[
        str | None,
        typer.Option(
            help="--int8 calibration episodes from: synthetic (embedded, default), pascal, coco "
            "or folder (your own images; training classes of --calib-fold)."
        ),
    ] = None,
    data_root: DataRootOption = None,
    coco_split: CocoSplitOption = _DATA.coco_split,
    splits_dir: SplitsDirOption = _DATA.splits_dir,
    skip_missing: SkipMissingOption = _DATA.skip_missing,
    val_classes: ValClassesOption = None,
    folds: FoldsOption = _DATA.folds,
    calib_fold: Annotated[
        int | None, typer.Option(help="Fold whose training classes calibrate (default: 0).")
    ] = None,
    calib_episodes: Annotated[
        int | None,
        typer.Option(help="Calibration episodes; each gives a support and a query (default: 64)."),
    ] = None,
    calib_seed: Annotated[
        int | None, typer.Option(help="Seed of the calibration episodes (default: 0).")
    ] = None,
    calib_method: Annotated[
        str | None,
        typer.Option(help="Calibration method: minmax (default) or percentile."),
    ] = None,
    beta: Annotated[
        float | None,
        typer.Option(
            help="Discriminator threshold baked into the graphs "
            "(default: the checkpoint config's beta_test, 0.2)."
        ),
    ] = None,
    raw_input: Annotated[
        bool,
        typer.Option(
            "--raw-input",
            help="Take uint8 RGB images [B,K,H,W,3] / [B,H,W,3] and uint8 masks; "
            "normalise inside the graph.",
        ),
    ] = False,
) -> None:
    """Export a DPNet checkpoint to ONNX graphs that follow the dpnet I/O contract.

    Writes dpnet.onnx: supports + query -> logits, mask, pseudo_count, confidence.

    Writes dpnet_support.onnx / dpnet_query.onnx: encode supports once, segment many queries.

    Batch B and shots K are dynamic axes; the image size is fixed. Lint with dpnet-export check.

    Example: dpnet-export onnx --ckpt runs/fold0/best.pt --out out/ --fp16 --int8
    """
    from dpnet_export.calibration import CalibrationOptions
    from dpnet_export.torch_to_onnx import ExportOptions, export_onnx

    # The defaults live in the options dataclasses alone; importing them at module level
    # would slow down --help.
    data_options = dataset_flags(
        coco_split=coco_split,
        splits_dir=splits_dir,
        skip_missing=skip_missing,
        val_classes=val_classes,
        folds=folds,
    )
    calibration = CalibrationOptions(
        data_options=data_options,
        **_given(
            dataset=calib_dataset,
            root=data_root,
            fold=calib_fold,
            episodes=calib_episodes,
            seed=calib_seed,
            method=calib_method,
        ),
    )
    options = ExportOptions(
        size=size,
        fp16=fp16,
        int8=int8,
        calibration=calibration,
        beta=beta,
        raw_input=raw_input,
        **_given(max_shots=max_shots, int8_ccm=int8_ccm),
    )
    result = export_onnx(ckpt, out, options, progress=lambda message: stderr_console.log(message))
    table = Table(title=f"dpnet-export onnx: {result.out_dir} ({result.seconds:.1f} s)")
    table.add_column("file")
    table.add_column("size (MB)", justify="right")
    for path in result.files:
        table.add_row(path.name, f"{path.stat().st_size / 1e6:.1f}")
    stdout_console.print(table)
    stdout_console.print(
        f"input {result.input_size} x {result.input_size}, shots 1..{options.max_shots}, "
        f"beta {result.beta}, checkpoint sha256 {result.checkpoint_sha256[:12]}"
    )


def _given(**values: object) -> dict[str, Any]:
    return {name: value for name, value in values.items() if value is not None}
