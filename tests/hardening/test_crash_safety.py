"""Crash safety with real processes: SIGKILL during a write leaves the old or the new file.

Each test starts a real writer (a checkpoint loop, ``dpnet-export onnx``, ``dpnet-train``),
watches the destination folder for the temporary file that
:func:`dpnet_runtime.fileio.atomic_path` creates, and SIGKILLs the writer a random moment
later, so the kill lands inside a write. The destination must then load completely.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import onnx
import pytest

from dpnet_runtime import Predictor, contract
from dpnet_runtime.errors import IncompatibleModelError

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
GRAPHS = ("dpnet.onnx", "dpnet_support.onnx", "dpnet_query.onnx")

CHECKPOINT_LOOP = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from dpnet.checkpoint import make_meta, save_checkpoint
    from dpnet.config import preset
    from dpnet.model.dpnet import build_dpnet

    # The paper preset: a ~100 MB file, so that a kill lands inside the write.
    model = build_dpnet(preset("paper"), pretrained_backbone=False)
    epoch = 0
    while True:
        epoch += 1
        meta = make_meta(dataset="synthetic", fold=0, shots=1, epoch=epoch)
        save_checkpoint(Path(sys.argv[1]), model, meta)
    """
)


def _kill_inside_a_write(
    process: subprocess.Popen[bytes], folder: Path, delay_s: float, *, after: Path | None = None
) -> bool:
    """SIGKILL ``process`` ``delay_s`` after a temp file of an atomic write shows in ``folder``.

    With ``after``, wait for that file to exist first (so an old complete file is there).
    Returns whether the temp file was still there after the kill (the write was cut short).
    """
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = process.stderr.read().decode() if process.stderr else ""
            pytest.fail(f"the writer exited with {process.returncode} before the kill: {output}")
        if (after is None or after.exists()) and any(folder.glob(".*.tmp")):
            time.sleep(delay_s)
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
            return any(folder.glob(".*.tmp"))
        time.sleep(0.002)
    process.kill()
    pytest.fail("no atomic write seen within 240 s")


def test_sigkill_during_checkpoint_writes_leaves_a_loadable_checkpoint(tmp_path: Path) -> None:
    from dpnet.checkpoint import load_checkpoint

    script = tmp_path / "loop.py"
    script.write_text(CHECKPOINT_LOOP)
    target = tmp_path / "run" / "last.pt"
    target.parent.mkdir()
    rng = random.Random(8)
    cut_short = 0
    # How long a write takes depends on the disk, so kill until two kills have landed inside one.
    for _ in range(10):
        process = subprocess.Popen(
            [sys.executable, str(script), str(target)], stderr=subprocess.PIPE
        )
        cut_short += _kill_inside_a_write(
            process, target.parent, rng.uniform(0.0, 0.05), after=target
        )
        assert load_checkpoint(target).meta["epoch"] >= 1  # the old or the new, complete
        if cut_short >= 2:
            break
    assert cut_short >= 1, "no kill landed inside a write; the test proved nothing"


def _graph_beta(path: Path) -> float:
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    props = {prop.key: prop.value for prop in proto.metadata_props}
    return float(json.loads(props[contract.META_BETA]))


def test_sigkill_during_export_leaves_complete_graphs(
    small_checkpoint: Path, small_export: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    for name in GRAPHS:  # the old export, beta 0.2; the new one has beta 0.35
        (out / name).write_bytes((small_export / name).read_bytes())
    command = [str(BIN / "dpnet-export"), "onnx", "--ckpt", str(small_checkpoint), "--out",
               str(out), "--max-shots", "2", "--beta", "0.35"]  # fmt: skip
    process = subprocess.Popen(command, stderr=subprocess.PIPE)
    _kill_inside_a_write(process, out, random.Random(5).uniform(0.0, 0.02))
    betas = {name: _graph_beta(out / name) for name in GRAPHS}
    assert set(betas.values()) <= {0.2, 0.35}, betas


def test_graphs_of_two_exports_are_not_paired(small_export: Path, tmp_path: Path) -> None:
    for name in GRAPHS:
        proto = onnx.load(str(small_export / name))
        if name == "dpnet_query.onnx":  # as written by an export of another checkpoint
            props = {prop.key: prop.value for prop in proto.metadata_props}
            props[contract.META_CHECKPOINT_SHA256] = "0" * 64
            onnx.helper.set_model_props(proto, props)
        onnx.save(proto, str(tmp_path / name))
    with pytest.raises(IncompatibleModelError):
        Predictor.open(tmp_path).close()


def _train(out: Path, *extra: str) -> subprocess.Popen[bytes]:
    command = [str(BIN / "dpnet-train"), "--out", str(out), "--preset", "tiny", "--steps", "6",
               "--val-every", "1", "--val-episodes", "0", "--batch-size", "1", "--threads", "1",
               *extra]  # fmt: skip
    return subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)


def test_train_resumes_from_the_last_complete_checkpoint_after_sigkill(tmp_path: Path) -> None:
    from dpnet.checkpoint import load_checkpoint

    if not (BIN / "dpnet-train").exists():
        pytest.skip("dpnet-train is not installed")
    out = tmp_path / "run"
    last = out / "last.pt"
    _kill_inside_a_write(_train(out), out, 0.005, after=last)
    killed_at = load_checkpoint(last).train_state
    assert killed_at is not None and 1 <= killed_at["step"] < 6
    resumed = _train(out, "--resume")
    _, errors = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, errors.decode()
    state = load_checkpoint(last).train_state
    assert state is not None and state["step"] == 6
    assert len(state["losses"]) >= killed_at["step"]  # the history before the kill is kept
