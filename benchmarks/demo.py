"""``dpnet-demo``: the main job end to end on the embedded synthetic benchmark, in minutes on a CPU.

1. Train the ``tiny`` config on fold 0, 1-shot (:func:`dpnet.train.loop.train`), for at most
   ``steps`` steps or ``minutes`` minutes, whichever comes first.
2. Evaluate the trained model and the untrained one (the same initialisation) on the same
   held-out episodes of the fold's unseen classes.
3. Export the trained model to ONNX (:func:`dpnet_export.torch_to_onnx.export_onnx`).
4. Save a picture (:mod:`dpnet_runtime.sheet`): the support with its mask, the query, the
   prediction with its IoU and the ground truth, each panel captioned.

The trunk stays random (``pretrained_backbone=False``): the tiny trunk is a cut-down ResNet
for which no ImageNet weights exist, and the synthetic classes need none. Files go to
``out/``: ``run/last.pt`` (replaced on every demo), ``onnx/`` and ``demo.png``.

The demo lives in :mod:`dpnet_bench`, the layer that may use every other package: it trains
and evaluates with :mod:`dpnet` and exports with :mod:`dpnet_export`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import typer
from rich.table import Table

from dpnet.checkpoint import load_model
from dpnet.data import Episode, build_dataset
from dpnet.eval.evaluate import EvalResult, evaluate, predict_episode
from dpnet.metrics import IoUAccumulator
from dpnet.model.dpnet import DPNet, build_dpnet
from dpnet.train.loop import TrainProgress, TrainResult, train
from dpnet.train.options import TrainOptions
from dpnet_export.torch_to_onnx import export_onnx
from dpnet_runtime.console import make_app, make_progress, run_app, stdout_console
from dpnet_runtime.postprocess import save_image
from dpnet_runtime.sheet import query_panels, render_sheet, support_panels

__all__ = ["DemoOptions", "DemoResult", "app", "main", "run_demo"]


@dataclass(frozen=True)
class DemoOptions:
    """What the demo does.

    Args:
        out: output folder (created).
        minutes: training time limit.
        steps: training step limit (about 3 minutes on 2 free CPU cores).
        seed: run and episode seed.
        eval_episodes: held-out episodes for the trained/untrained comparison.
        threads: torch CPU threads.
    """

    out: Path = Path("demo")
    minutes: float = 3.0
    steps: int = 1200
    seed: int = 0
    eval_episodes: int = 200
    threads: int = 2


@dataclass(frozen=True)
class DemoResult:
    """What the demo produced.

    Attributes:
        training: the training run.
        trained: evaluation of the trained model.
        untrained: evaluation of the same network before training.
        onnx_files: the exported graphs.
        picture: the captioned PNG of support, query, prediction and ground truth.
        seconds: total wall time.
    """

    training: TrainResult
    trained: EvalResult
    untrained: EvalResult
    onnx_files: tuple[Path, ...]
    picture: Path
    seconds: float


def run_demo(
    options: DemoOptions, progress: Callable[[TrainProgress], None] | None = None
) -> DemoResult:
    """Train, evaluate, export and draw (see the module docstring).

    Args:
        options: see :class:`DemoOptions`.
        progress: optional training progress callback (:class:`~dpnet.train.loop.TrainProgress`).

    Raises:
        DpnetError: the output folder cannot be written.
    """
    start = time.perf_counter()
    run_dir = Path(options.out) / "run"
    for name in ("last.pt", "best.pt"):  # the demo's own previous run
        (run_dir / name).unlink(missing_ok=True)
    training = train(
        TrainOptions(
            out=run_dir, steps=options.steps, time_limit_s=options.minutes * 60,
            seed=options.seed, val_every=0, val_episodes=0, threads=options.threads,
            pretrained_backbone=False, device="cpu",
        ),
        progress,
    )  # fmt: skip
    model, _ = load_model(training.last_checkpoint)
    torch.manual_seed(options.seed)  # the initialisation train() started from
    untrained_model = build_dpnet(training.config, pretrained_backbone=False)
    episodes = build_dataset(
        "synthetic", root=None, fold=0, split="val", shots=1, seed=options.seed,
        episodes=options.eval_episodes,
    )  # fmt: skip
    trained = evaluate(model, episodes)
    untrained = evaluate(untrained_model, episodes)
    onnx_files = export_onnx(training.last_checkpoint, Path(options.out) / "onnx").files
    picture = Path(options.out) / "demo.png"
    episode = episodes[0]
    class_name = episodes.class_names[episode.class_id]
    save_image(picture, _picture(model, episode, class_name, training.last_checkpoint))
    return DemoResult(
        training, trained, untrained, onnx_files, picture, time.perf_counter() - start
    )


def _picture(model: DPNet, episode: Episode, class_name: str, checkpoint: Path) -> np.ndarray:
    """The contact sheet of one held-out episode: support with its mask, then the query, the
    prediction (with its IoU) and the ground truth, every panel captioned; the title names the
    class and the model that predicted."""
    model.eval()
    prediction = predict_episode(model, episode)
    accumulator = IoUAccumulator([episode.class_id])
    accumulator.update(prediction, episode.query_mask, episode.class_id)
    iou = accumulator.result()["per_class"][episode.class_id]["iou_pfenet"]
    rows = [
        support_panels(episode.support_images, episode.support_masks),
        query_panels(episode.query_image, prediction, "query", episode.query_mask, iou),
    ]
    title = [
        f"dpnet-demo: unseen class {class_name} (id {episode.class_id}), 1-shot, IoU {iou:.1f}",
        f"model {checkpoint} (torch, fp32; {model.config.name} config)",
    ]
    return render_sheet(rows, title)


app = make_app(
    name="dpnet-demo",
    help="Train a tiny DPNet on the synthetic benchmark, evaluate, export and draw it.",
)
_DEFAULTS = DemoOptions()


@app.command()
def command(
    out: Annotated[Path, typer.Option(help="Output folder.")] = _DEFAULTS.out,
    minutes: Annotated[float, typer.Option(help="Training time limit.")] = _DEFAULTS.minutes,
    steps: Annotated[int, typer.Option(help="Training step limit.")] = _DEFAULTS.steps,
    seed: Annotated[int, typer.Option(help="Run and episode seed.")] = _DEFAULTS.seed,
    episodes: Annotated[
        int, typer.Option(help="Held-out evaluation episodes.")
    ] = _DEFAULTS.eval_episodes,
) -> None:
    """Train (minutes), evaluate trained vs untrained, export ONNX, save demo.png.

    Example: dpnet-demo --out demo/ --minutes 3
    """
    options = DemoOptions(out=out, minutes=minutes, steps=steps, seed=seed, eval_episodes=episodes)
    with make_progress() as progress:
        task = progress.add_task("training tiny DPNet", total=steps, status="")

        def report(update: TrainProgress) -> None:
            status = f"loss {update.losses.total:.3f}"
            progress.update(task, completed=update.step, total=update.total_steps, status=status)

        result = run_demo(options, report)
    _print(result)


def _print(result: DemoResult) -> None:
    losses = result.training.losses
    table = Table(title="dpnet-demo: synthetic benchmark, fold 0, 1-shot, tiny config")
    table.add_column("model")
    table.add_column("mIoU pfenet", justify="right")
    table.add_column("mIoU canet", justify="right")
    table.add_column("FB-IoU", justify="right")
    for name, metrics in (("untrained", result.untrained), ("trained", result.trained)):
        table.add_row(
            name, f"{metrics.miou_pfenet:.1f}", f"{metrics.miou_canet:.1f}", f"{metrics.fbiou:.1f}"
        )
    stdout_console.print(table)
    training = result.training
    stdout_console.print(
        f"trained {training.steps} steps in {training.seconds:.0f} s "
        f"({training.steps_per_second:.2f} steps/s), loss {losses[0].total:.3f} -> "
        f"{losses[-1].total:.3f}; checkpoint {training.last_checkpoint}"
    )
    stdout_console.print(f"ONNX: {', '.join(str(p) for p in result.onnx_files)}")
    stdout_console.print(f"picture: {result.picture}; total {result.seconds:.0f} s")


def main() -> None:
    """Console-script entry point."""
    run_app(app)
