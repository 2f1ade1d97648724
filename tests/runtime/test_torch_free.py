"""dpnet_runtime imports and runs a real export (``small_export``) with torch, dpnet,
dpnet_export, onnx and matplotlib blocked, and gets the results it gets with them loaded."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
from PIL import Image

from dpnet_runtime import Predictor

# A None entry in sys.modules makes `import torch` raise ImportError, as if uninstalled.
_SCRIPT = textwrap.dedent(
    """
    import sys
    blocked = ("torch", "torchvision", "dpnet", "dpnet_export", "dpnet_bench", "onnx", "matplotlib")
    for name in blocked:
        sys.modules[name] = None
    try:
        import torch
    except ImportError:
        pass
    else:
        raise SystemExit("torch import was not blocked")

    import numpy as np
    from PIL import Image
    from dpnet_runtime import Predictor
    from dpnet_runtime.preprocess import load_image, load_mask

    folder, support, mask, query = sys.argv[1:5]
    with Predictor.open(folder, intra_op_threads=1) as predictor:
        cached = predictor.segment(
            load_image(query), predictor.encode_support([load_image(support)], [load_mask(mask)])
        )
        episode = predictor.run_episode([load_image(support)], [load_mask(mask)], load_image(query))
    assert (cached.mask == episode.mask).all()
    np.save(sys.argv[5], episode.logits)
    from pathlib import Path
    from dpnet_runtime.batch import SegmentRequest, segment_files
    from dpnet_runtime.cli import app

    out = Path(query).parent / "batch"
    request = SegmentRequest(((Path(support), Path(mask)),), (Path(query),), out_dir=out,
                             labels=Path(query).parent, sheet=out / "sheet.png")
    report = segment_files(folder, request, intra_op_threads=1)
    assert report.results[0].iou_pct is not None and (out / "sheet.png").is_file()
    loaded = sorted(
        name
        for name, module in sys.modules.items()
        if module is not None and name.split(".")[0] in ("torch", "dpnet", "dpnet_export")
    )
    print("object pixels", int(episode.mask.sum()), "heavy modules", loaded)
    """
)


def test_runtime_runs_an_episode_without_torch(small_export: Path, tmp_path: Path, scene) -> None:
    image, mask = scene(40, 48, 5, 10, 20)
    query, truth = scene(50, 60, 20, 25, 22)
    paths = [tmp_path / name for name in ("support.png", "mask.png", "query.png")]
    for path, pixels in zip(paths, (image, mask * 255, query), strict=True):
        Image.fromarray(pixels).save(path)
    Image.fromarray(truth * 255).save(tmp_path / "query_mask.png")  # --labels for the batch
    logits = tmp_path / "logits.npy"
    completed = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(small_export), *map(str, paths), str(logits)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert "heavy modules []" in completed.stdout
    with Predictor.open(small_export, intra_op_threads=1) as predictor:  # torch loaded here
        expected = predictor.run_episode([image], [mask], query)
    assert int(completed.stdout.split()[2]) == int(expected.mask.sum())
    np.testing.assert_allclose(np.load(logits), expected.logits, atol=1e-5)
