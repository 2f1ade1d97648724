"""The lines a user reads for the mistakes a newcomer makes, each checked word for word.

Every case runs the command a user would type, in a subprocess, on real files.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow

_BIN = Path(sys.executable).parent


def _run(*command: str | Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(part) for part in command], capture_output=True, text=True, timeout=300,
        check=False, env={**os.environ, **env},
    )  # fmt: skip


def _error_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    return lines[0]


def test_a_run_folder_as_ckpt_says_it_is_a_folder_and_names_the_checkpoint(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.pt").write_bytes(tiny_checkpoint.read_bytes())
    done = _run(_BIN / "dpnet-export", "onnx", "--ckpt", run, "--out", tmp_path / "out")
    assert _error_line(done) == (
        f"error: checkpoint {run} is a folder, not a checkpoint file; did you mean {run}/best.pt?"
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    done = _run(_BIN / "dpnet-eval", "--ckpt", empty)
    assert _error_line(done) == (
        f"error: checkpoint {empty} is a folder, not a checkpoint file; "
        "give a .pt file dpnet-train wrote"
    )


def _segment(model: Path, tmp_path: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    image = tmp_path / "cat.png"
    Image.fromarray(np.full((40, 48, 3), 90, np.uint8)).save(image)
    return _run(sys.executable, "-m", "dpnet_runtime", "--model", model, "--query", image,
                "--out", tmp_path / "result.png", *args)  # fmt: skip


def test_a_checkpoint_as_model_says_export_it_first(tiny_checkpoint: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"  # a training run: the folder dpnet-train wrote
    run.mkdir()
    checkpoint = run / "best.pt"
    checkpoint.write_bytes(tiny_checkpoint.read_bytes())
    mask = tmp_path / "cat_mask.png"
    Image.fromarray(np.eye(40, 48, dtype=np.uint8) * 255).save(mask)
    support = ("--support", f"{tmp_path / 'cat.png'}:{mask}")
    done = _segment(checkpoint, tmp_path, *support)
    assert _error_line(done) == (
        f"error: {checkpoint} is a checkpoint: export it with dpnet-export onnx --ckpt "
        f"{checkpoint} --out DIR, then pass --model DIR"
    )
    done = _segment(run, tmp_path, *support)
    assert _error_line(done) == (
        f"error: {run} is a training run, not an export; best.pt is a checkpoint: export it "
        f"with dpnet-export onnx --ckpt {checkpoint} --out DIR, then pass --model DIR"
    )


def test_class_id_missing_from_a_label_map_names_the_classes_it_holds(
    tiny_export_dir: Path, tmp_path: Path
) -> None:
    label_map = np.zeros((40, 48), np.uint8)
    label_map[10:30, 12:36] = 17  # a sheep, VOC class 17, with a 255 border
    label_map[9, 12:36] = 255
    mask = tmp_path / "sheep.png"
    Image.fromarray(label_map).save(mask)
    support = ("--support", f"{tmp_path / 'cat.png'}:{mask}")
    done = _segment(tiny_export_dir, tmp_path, *support, "--class-id", "1")
    assert _error_line(done) == (
        f"error: mask {mask} holds no pixel of class 1 (--class-id 1): it holds class 17; "
        "pass --class-id 17"
    )


_WITHOUT_TRITONCLIENT = textwrap.dedent(
    """
    import importlib.abc, sys

    class Uninstalled(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] == "tritonclient":
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, Uninstalled())
    sys.argv[0] = "dpnet-export"
    from dpnet_export.cli import main
    main()
    """
)


def test_the_triton_hint_keeps_its_extra_in_brackets(tiny_export_dir: Path, tmp_path: Path) -> None:
    done = _run(sys.executable, "-c", _WITHOUT_TRITONCLIENT, "triton", "--model", tiny_export_dir,
                "--out", tmp_path / "repo", "--cpu")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == (
        f"wrote {tmp_path / 'repo'} (3 models; not checked: pip install 'dpnet[triton]' to "
        "check the configs)"
    )


_RANDOM_TRUNK = textwrap.dedent(
    """
    from dpnet_runtime.console import make_app, run_app

    app = make_app(name="trunk")

    @app.command()
    def command() -> None:
        from dpnet.model.backbone import load_resnet50_state_dict

        load_resnet50_state_dict(None)

    run_app(app)
    """
)


def test_the_random_trunk_warning_is_one_line_without_python_source(tmp_path: Path) -> None:
    done = _run(sys.executable, "-c", _RANDOM_TRUNK, TORCH_HOME=str(tmp_path))  # no hub cache
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [
        "warning: no ResNet-50 ImageNet weights given (--backbone-weights) or found in the torch "
        "hub cache: the frozen backbone is RANDOM; results on real data will be poor"
    ]
