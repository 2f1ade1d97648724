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
    SkipMissingOption,
    SplitsDirOption,
    ValClassesOption,
    dataset_flags,
)
from dpnet_runtime.console import stderr_console, stdout_console
from dpnet_runtime.contract import FORMATS
from dpnet_runtime.formats import converted_precisions, parse_precisions, precision_help

__all__ = ["command"]

_DATA = DatasetOptions()
# The shared FoldsOption names --fold, which this command calls --calib-fold.
_CalibFoldsOption = Annotated[
    int | None,
    typer.Option(
        "--folds",
        help="folder: cut the sorted classes into N folds; --calib-fold picks the one whose "
        "training classes calibrate.",
    ),
]
_CALIBRATED = tuple(dict.fromkeys(row.precision for row in FORMATS.values() if row.calibrated))


def command(
    ckpt: Annotated[
        Path,
        typer.Option("--ckpt", help="Checkpoint written by dpnet-train (dpnet-checkpoint format)."),
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            help="Folder for the graphs; created if missing, the graphs of an earlier export "
            "replaced.",
        ),
    ] = Path("out"),
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="Remove the graphs an earlier export wrote in --out in precisions this one "
            "does not (they would not match); without it such a folder is refused.",
        ),
    ] = False,
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
    precision: Annotated[
        list[str],
        typer.Option(
            help=f"Other precisions to write besides the FP32 graphs (always written), "
            f"comma-separated or repeated ({','.join(converted_precisions())}). "
            f"{precision_help(converted=True)}. TensorRT builds its engines from these graphs "
            "(the INT8 ones in their own symmetric S8S8 flavour, *_int8_trt.onnx)."
        ),
    ] = [],  # noqa: B006 (typer reads the default, never mutates it)
    int8_ccm: Annotated[
        bool | None,
        typer.Option(
            "--int8-ccm/--no-int8-ccm",
            help="With --precision int8: run the CCM's similarity MatMul in INT8 too (default; "
            "MatMulInteger on ONNX Runtime, S8S8 Q/DQ for TensorRT; the ArgMax stay as they "
            "are). --no-int8-ccm keeps the whole CCM float: slower, the C' set closer to FP32.",
            show_default=False,
        ),
    ] = None,
    calib_dataset: Annotated[
        str | None,
        typer.Option(
            help=f"Calibration episodes of {'/'.join(_CALIBRATED)} from: synthetic (embedded, "
            "default), pascal, coco or folder (your own images; training classes of --calib-fold)."
        ),
    ] = None,
    data_root: DataRootOption = None,
    coco_split: CocoSplitOption = _DATA.coco_split,
    splits_dir: SplitsDirOption = _DATA.splits_dir,
    skip_missing: SkipMissingOption = _DATA.skip_missing,
    val_classes: ValClassesOption = None,
    folds: _CalibFoldsOption = _DATA.folds,
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

    Batch B and shots K are dynamic axes; the image size is fixed. Every graph written passes
    dpnet-export check, with the rules of the runtime it is for.

    Example: dpnet-export onnx --ckpt runs/fold0/best.pt --out out/ --precision fp16,int8
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
        precisions=parse_precisions(",".join(precision), converted_precisions(), "--precision"),
        calibration=calibration,
        beta=beta,
        raw_input=raw_input,
        overwrite=overwrite,
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
