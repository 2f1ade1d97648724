"""dpnet-segment never writes over or into its inputs, makes a folder --out, writes the format of
each output's extension, and counts "no object" images alike on the console and in the report.

The CLI runs in a subprocess on the fake colour-prototype graphs (``fake_export_dir``: the mask
lands on the red square), so every case is a real run with real files.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dpnet_runtime.batch import SegmentRequest, segment_files

from .conftest import square_scene

pytestmark = pytest.mark.slow


@pytest.fixture
def data(tmp_path: Path) -> dict[str, Path]:
    """A support pair and a folder dataset: photos/q.png with ground truth photos/q_mask.png."""
    support, mask = square_scene(40, 48, 5, 10, 20)
    Image.fromarray(support).save(tmp_path / "cat.png")
    Image.fromarray(mask * 255).save(tmp_path / "cat_mask.png")
    photos = tmp_path / "photos"
    photos.mkdir()
    for name, geometry in {"q": (50, 60, 20, 25, 22), "r": (44, 40, 4, 6, 18)}.items():
        image, truth = square_scene(*geometry)
        Image.fromarray(image).save(photos / f"{name}.png")
        Image.fromarray(truth * 255).save(photos / f"{name}_mask.png")
    return {"support": tmp_path / "cat.png", "mask": tmp_path / "cat_mask.png", "photos": photos}


def _segment(model: Path, data: dict[str, Path], *args: str | Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "dpnet_runtime", "--model", str(model),
               "--support", f"{data['support']}:{data['mask']}", *map(str, args)]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*"))
            if path.is_file()}  # fmt: skip


def _one_error(done: subprocess.CompletedProcess, code: int) -> str:
    assert done.returncode == code, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


def test_labels_as_out_is_refused_and_the_ground_truth_stays(
    fake_export_dir: Path, data: dict[str, Path], tmp_path: Path
) -> None:
    photos, queries = data["photos"], tmp_path / "queries"
    queries.mkdir()
    (queries / "q.png").write_bytes((photos / "q.png").read_bytes())
    before = _files(tmp_path)
    done = _segment(fake_export_dir, data, "--query", queries, "--labels", photos,
                    "--out", photos)  # fmt: skip
    assert _one_error(done, 1) == (
        f"error: --out {photos} is --labels {photos}: dpnet never writes over or into its "
        "inputs; choose another --out"
    )
    assert _files(tmp_path) == before


@pytest.mark.parametrize(
    ("out", "message"),
    [
        ("photos", "error: --out {tmp}/photos holds --query {tmp}/photos/q.png: dpnet does not "
         "write among your inputs; choose another --out (a new folder)"),
        ("photos/q_mask.png",
         "error: --out {tmp}/photos/q_mask.png is --labels {tmp}/photos/q_mask.png"),
        ("cat_mask.png", "error: --out {tmp}/cat_mask.png is --support {tmp}/cat_mask.png"),
    ],
)  # fmt: skip
def test_an_output_on_the_inputs_is_refused(
    fake_export_dir: Path, data: dict[str, Path], tmp_path: Path, out: str, message: str
) -> None:
    before = _files(tmp_path)
    query = data["photos"] / "q.png"
    labels = ["--labels", data["photos"]] if out.endswith("q_mask.png") else []
    done = _segment(fake_export_dir, data, "--query", query, *labels, "--out", tmp_path / out)
    assert _one_error(done, 1).startswith(message.format(tmp=tmp_path))
    assert _files(tmp_path) == before


@pytest.mark.parametrize("out", ["new/masks/", "masks"])
def test_a_missing_output_folder_is_created(
    fake_export_dir: Path, data: dict[str, Path], tmp_path: Path, out: str
) -> None:
    done = _segment(fake_export_dir, data, "--query", data["photos"] / "q.png",
                    "--out", f"{tmp_path}/{out}")  # fmt: skip
    assert done.returncode == 0, done.stderr
    folder = tmp_path / out
    assert folder.is_dir() and sorted(p.name for p in folder.iterdir()) == ["q_mask.png"]


def test_each_output_has_the_format_of_its_extension(
    fake_export_dir: Path, data: dict[str, Path], tmp_path: Path
) -> None:
    query = data["photos"] / "q.png"
    refused = _segment(fake_export_dir, data, "--query", query, "--out", tmp_path / "m.jpg")
    assert _one_error(refused, 2) == (
        f"error: --out {tmp_path}/m.jpg: dpnet does not write .jpg files here; name it .png, "
        ".bmp, .tif or .tiff"
    )
    bad_json = _segment(fake_export_dir, data, "--query", query, "--out", tmp_path / "m.png",
                        "--json", tmp_path / "iou.txt")  # fmt: skip
    assert "dpnet does not write .txt files here; name it .json" in _one_error(bad_json, 2)
    assert not (tmp_path / "m.jpg").exists() and not (tmp_path / "m.png").exists()
    done = _segment(fake_export_dir, data, "--query", query, "--out", tmp_path / "m.tif",
                    "--overlay", tmp_path / "o.jpg", "--sheet", tmp_path / "s.webp",
                    "--labels", data["photos"])  # fmt: skip
    assert done.returncode == 0, done.stderr
    for name, kind in (("m.tif", "TIFF"), ("o.jpg", "JPEG"), ("s.webp", "WEBP")):
        with Image.open(io.BytesIO((tmp_path / name).read_bytes())) as image:
            assert image.format == kind, name
    mask = np.asarray(Image.open(tmp_path / "m.tif"))
    assert set(np.unique(mask)) == {0, 255}  # lossless: the mask keeps its two values


def test_no_object_images_count_alike_in_mean_pooled_and_console(
    fake_export_dir: Path, data: dict[str, Path], tmp_path: Path
) -> None:
    # An empty scene (no red square) with an empty ground truth: nothing to find, none found.
    empty, _ = square_scene(30, 30, 0, 0, 0)
    Image.fromarray(empty).save(data["photos"] / "s.png")
    Image.fromarray(np.zeros((30, 30), np.uint8)).save(data["photos"] / "s_mask.png")
    report_path = tmp_path / "iou.json"
    done = _segment(fake_export_dir, data, "--query", data["photos"], "--labels", data["photos"],
                    "--out", tmp_path / "masks", "--json", report_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(report_path.read_text())
    by_name = {Path(entry["query"]).name: entry for entry in report["queries"]}
    assert by_name["s.png"]["no_object"] and by_name["s.png"]["iou_pct"] is None
    scored = [by_name[name]["iou_pct"] for name in ("q.png", "r.png")]
    assert report["mean_iou_pct"] == pytest.approx(float(np.mean(scored)))
    line = (
        f"mean IoU {report['mean_iou_pct']:.1f} over 2 queries (pooled "
        f"{report['pooled_iou_pct']:.1f}); 1 with no object, none predicted"
    )
    assert line in done.stdout
    assert "s.png" in done.stdout and "no object" in done.stdout  # the per-image table
    # The library gives the same numbers (the sheet's title is drawn from them).
    request = SegmentRequest(((data["support"], data["mask"]),),
                             tuple(sorted(data["photos"].glob("[qrs].png"))),
                             out_dir=tmp_path / "again", labels=data["photos"])  # fmt: skip
    again = segment_files(fake_export_dir, request)
    assert (again.mean_iou_pct, again.pooled_iou_pct) == pytest.approx(
        (report["mean_iou_pct"], report["pooled_iou_pct"])
    )
