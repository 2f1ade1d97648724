"""Many queries against one support set: files, folders and globs, IoU, names, the CLI.

On the real 65 x 65 export (``small_export``), except the IoU tests named ``fake``: they need
masks that land on the object, which the colour-prototype graphs of ``conftest.py`` draw and a
random-weight DPNet does not.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from dpnet.metrics import IoUAccumulator
from dpnet_runtime import Predictor, contract
from dpnet_runtime.artifacts import EPISODE, QUERY, SUPPORT
from dpnet_runtime.backends.ort import OrtRunner
from dpnet_runtime.batch import SegmentRequest, segment_files, segment_queries
from dpnet_runtime.errors import InputError, OptionError
from dpnet_runtime.queries import expand_queries

from .conftest import square_scene
from .test_sheet import LEGEND_BANDS, text_bands

# (height, width, top, left, side) of each query: sizes differ, squares move.
QUERIES = {
    "a": (50, 60, 20, 25, 22),
    "b": (44, 40, 4, 6, 18),
    "c": (64, 48, 30, 10, 25),
    "d": (40, 70, 8, 40, 20),
}


class CountingOrtRunner(OrtRunner):
    """A real ONNX Runtime runner that counts its graph calls."""

    def __init__(self, path: Path, **options: Any) -> None:
        super().__init__(path, **options)
        self.calls = 0

    def _infer(self, feed: Any) -> Any:
        self.calls += 1
        return super()._infer(feed)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Any]:
    """A support pair, a folder of query images with 0/1/255 ground truth beside them."""
    support, support_mask = square_scene(40, 48, 5, 10, 20)
    Image.fromarray(support).save(tmp_path / "support.png")
    Image.fromarray(support_mask * 255).save(tmp_path / "support_mask.png")
    queries = tmp_path / "queries"
    queries.mkdir()
    for name, geometry in QUERIES.items():
        image, truth = square_scene(*geometry)
        top, left, side = geometry[2:]
        truth[top, left : left + side] = 255  # ignore the square's top row: predicted object
        Image.fromarray(image).save(queries / f"{name}.png")
        Image.fromarray(truth).save(queries / f"{name}_mask.png")
    (queries / "notes.txt").write_text("not an image")
    (queries / ".hidden.png").write_bytes(b"")
    return {
        "support": (tmp_path / "support.png", tmp_path / "support_mask.png"),
        "queries": queries,
        "out": tmp_path / "out",
    }


def _counting_predictor(export_dir: Path) -> tuple[Predictor, dict[str, CountingOrtRunner]]:
    names = {role: contract.FORMATS["ort"].file_name(role) for role in (EPISODE, SUPPORT, QUERY)}
    runners = {role: CountingOrtRunner(export_dir / name) for role, name in names.items()}
    for runner in runners.values():
        runner.activate()
    return Predictor(runners), runners


def _mask(path: Path) -> np.ndarray:
    return (np.asarray(Image.open(path)) == 255).astype(np.uint8)


def test_folder_encodes_the_support_once_and_matches_one_call_per_query(
    small_export: Path, files: dict[str, Any], tmp_path: Path
) -> None:
    queries = expand_queries([files["queries"]])
    assert [path.name for path in queries] == ["a.png", "b.png", "c.png", "d.png"]
    request = SegmentRequest((files["support"],), queries, out_dir=files["out"])
    predictor, runners = _counting_predictor(small_export)
    with predictor:
        report = segment_queries(predictor, request)
    assert runners[SUPPORT].calls == 1
    assert runners[QUERY].calls == len(QUERIES)
    assert runners[EPISODE].calls == 0
    for result in report.results:
        single = tmp_path / f"single_{result.query.stem}.png"
        segment_files(
            small_export, SegmentRequest((files["support"],), (result.query,), out=single)
        )
        assert result.mask == files["out"] / f"{result.query.stem}_mask.png"
        np.testing.assert_array_equal(_mask(result.mask), _mask(single))
        assert result.object_pixels == int(_mask(single).sum())


def test_labels_iou_on_fake_graphs_matches_dpnet_metrics(
    fake_export_dir: Path, files: dict[str, Any]
) -> None:
    request = SegmentRequest(
        (files["support"],), expand_queries([files["queries"]]), out_dir=files["out"],
        labels=files["queries"],
    )  # fmt: skip
    report = segment_files(fake_export_dir, request)
    pooled = IoUAccumulator([1])
    for result in report.results:
        prediction = _mask(result.mask)
        truth = np.asarray(Image.open(files["queries"] / f"{result.query.stem}_mask.png"))
        assert result.label == files["queries"] / f"{result.query.stem}_mask.png"
        single = IoUAccumulator([1])
        single.update(prediction, truth, 1)
        pooled.update(prediction, truth, 1)
        assert result.iou_pct == pytest.approx(single.result()["miou_pfenet"])
        # The protocol matters here: counted as background, the ignore row would cost IoU.
        assert single.result()["miou_canet"] < result.iou_pct
    assert report.pooled_iou_pct == pytest.approx(pooled.result()["miou_pfenet"])
    per_image = [result.iou_pct for result in report.results]
    assert report.mean_iou_pct == pytest.approx(float(np.mean(per_image)))


def test_class_id_reads_label_maps_for_supports_and_labels_on_fake_graphs(
    fake_export_dir: Path, files: dict[str, Any], tmp_path: Path
) -> None:
    labels = tmp_path / "labels"
    labels.mkdir()
    for name in QUERIES:  # VOC-style: class 12 is the object, class 3 elsewhere is background
        truth = np.asarray(Image.open(files["queries"] / f"{name}_mask.png"))
        label = np.where(truth == 1, 12, np.where(truth == 255, 255, 3)).astype(np.uint8)
        Image.fromarray(label).convert("P").save(labels / f"{name}.png")
    support_mask = np.asarray(Image.open(files["support"][1]))
    Image.fromarray(np.where(support_mask == 255, 12, 0).astype(np.uint8)).save(
        tmp_path / "support_label.png"
    )
    queries = expand_queries([files["queries"]])
    binary = segment_files(
        fake_export_dir,
        SegmentRequest(
            (files["support"],), queries, out_dir=tmp_path / "a", labels=files["queries"]
        ),
    )
    label_maps = segment_files(
        fake_export_dir,
        SegmentRequest(
            ((files["support"][0], tmp_path / "support_label.png"),), queries,
            out_dir=tmp_path / "b", labels=labels, class_id=12,
        ),
    )  # fmt: skip
    assert [r.iou_pct for r in label_maps.results] == [r.iou_pct for r in binary.results]
    with pytest.raises(InputError, match="looks like a class-label map"):
        segment_files(
            fake_export_dir,
            SegmentRequest((files["support"],), queries, out_dir=tmp_path / "c", labels=labels),
        )


def test_globs_files_and_folders_expand_in_order_once(files: dict[str, Any]) -> None:
    folder = files["queries"]
    found = expand_queries([folder / "c.png", str(folder / "[ab].png"), folder])
    assert [path.name for path in found] == ["c.png", "a.png", "b.png", "d.png"]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["absent.png"], "query absent.png does not exist"),
        (["{tmp}/empty"], "query folder .*empty holds no image"),
        (["{tmp}/queries/*.jpg"], "query pattern .*queries/\\*.jpg' holds no image"),
    ],
)
def test_bad_query_arguments_name_the_path(
    files: dict[str, Any], tmp_path: Path, arguments: list[str], message: str
) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=message):
        expand_queries([argument.format(tmp=tmp_path) for argument in arguments])


def test_names_are_checked_before_the_model_runs(
    small_export: Path, files: dict[str, Any], tmp_path: Path
) -> None:
    queries = expand_queries([files["queries"]])
    other = tmp_path / "other"
    other.mkdir()
    Image.open(queries[0]).save(other / "a.png")
    clash = SegmentRequest((files["support"],), (*queries, other / "a.png"), out_dir=files["out"])
    with pytest.raises(InputError, match=r"queries .*queries/a.png and .*other/a.png would both"):
        segment_files(small_export, clash)
    no_label = SegmentRequest((files["support"],), queries, out_dir=files["out"], labels=other)
    with pytest.raises(InputError, match=r"no ground truth for query .*b.png: expected .*b_mask"):
        segment_files(small_export, no_label)
    assert not files["out"].exists()  # nothing ran
    with pytest.raises(OptionError, match=r"4 queries .* need a folder: --out DIR/"):
        SegmentRequest((files["support"],), queries, out=tmp_path / "mask.png")
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(other / "a_mask.png")
    small = SegmentRequest((files["support"],), queries[:1], out_dir=files["out"], labels=other)
    with pytest.raises(InputError, match=r"ground truth .*a_mask.png is 5 x 5 but query"):
        segment_files(small_export, small)


def _segment(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dpnet_runtime", *map(str, args)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_cli_segments_a_folder_with_labels_json_and_sheet(
    small_export: Path, files: dict[str, Any], tmp_path: Path
) -> None:
    support = f"{files['support'][0]}:{files['support'][1]}"
    report, sheet = tmp_path / "report.json", tmp_path / "sheet.png"
    completed = _segment(
        "--model", small_export, "--support", support, "--query", files["queries"] / "a.png",
        "--query", files["queries"] / "[bcd].png", "--out", files["out"],
        "--overlay", files["out"], "--labels", files["queries"], "--json", report,
        "--sheet", sheet, "--threads", "1",
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    data = json.loads(report.read_text())
    assert [Path(entry["query"]).name for entry in data["queries"]] == [
        "a.png",
        "b.png",
        "c.png",
        "d.png",
    ]
    for entry in data["queries"]:
        assert f"{Path(entry['query']).name} " in completed.stdout  # the per-image table
        assert f"{entry['iou_pct']:.1f}" in completed.stdout
        assert Path(entry["overlay"]).name == f"{Path(entry['query']).stem}_overlay.png"
    assert f"mean IoU {data['mean_iou_pct']:.1f} over 4 queries" in completed.stdout
    assert f"wrote 4 masks to {files['out']}" in completed.stderr
    assert sorted(path.name for path in files["out"].iterdir()) == sorted(
        f"{name}_{kind}.png" for name in QUERIES for kind in ("mask", "overlay")
    )
    picture = np.asarray(Image.open(sheet))
    # Three title lines (class, IoU, model), the legend, the support row, one row per query.
    assert text_bands(picture) == 3 + LEGEND_BANDS + 1 + len(QUERIES)


@pytest.mark.parametrize(
    ("case", "message", "code"),
    [
        ("many_to_out", "error: 4 queries (first {queries}/a.png) need a folder: --out DIR/", 2),
        ("no_label", "error: no ground truth for query {queries}/a.png: expected", 1),
        ("empty_folder", "error: query folder {tmp}/empty holds no image", 1),
    ],
)
def test_cli_errors_are_one_line_naming_the_path(
    small_export: Path, files: dict[str, Any], tmp_path: Path, case: str, message: str, code: int
) -> None:
    (tmp_path / "empty").mkdir()
    query, output = files["queries"], ["--out", files["out"]]
    if case == "many_to_out":
        output = ["--out", tmp_path / "mask.png"]
    elif case == "no_label":
        output += ["--labels", tmp_path / "empty"]
    else:
        query = tmp_path / "empty"
    support = f"{files['support'][0]}:{files['support'][1]}"
    completed = _segment("--model", small_export, "--support", support, "--query", query, *output)
    assert completed.returncode == code
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in completed.stderr
    assert lines[0].startswith(message.format(queries=files["queries"], tmp=tmp_path))
