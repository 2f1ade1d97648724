"""Where a command may write (``dpnet_runtime.outputs``), on real files, folders and links."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dpnet_runtime.errors import InputError, OptionError
from dpnet_runtime.outputs import (
    JSON_FORMATS,
    MASK_FORMATS,
    PICTURE_FORMATS,
    check_file_output,
    make_folder,
    names_folder,
    output_format,
    refuse_folder_holding,
    refuse_inputs,
    refuse_replacing,
)


@pytest.mark.parametrize(
    ("name", "formats", "expected"),
    [
        ("m.png", MASK_FORMATS, "PNG"),
        ("m.TIF", MASK_FORMATS, "TIFF"),
        ("stdout", MASK_FORMATS, "PNG"),  # no extension: the default (a stream, a FIFO)
        ("o.jpeg", PICTURE_FORMATS, "JPEG"),
        ("o.webp", PICTURE_FORMATS, "WEBP"),
    ],
)
def test_the_format_follows_the_extension(
    name: str, formats: dict[str, str], expected: str
) -> None:
    assert output_format(name, "--out", formats, "PNG") == expected


@pytest.mark.parametrize(
    ("name", "formats", "message"),
    [
        ("m.jpg", MASK_FORMATS, "--out m.jpg: dpnet does not write .jpg files here; name it "
         ".png, .bmp, .tif or .tiff"),
        ("r.txt", JSON_FORMATS, "--out r.txt: dpnet does not write .txt files here; name it .json"),
        ("o.gif", PICTURE_FORMATS, "--out o.gif: dpnet does not write .gif files here"),
    ],
)  # fmt: skip
def test_another_extension_is_a_usage_error(
    name: str, formats: dict[str, str], message: str
) -> None:
    with pytest.raises(OptionError) as raised:
        output_format(name, "--out", formats, "PNG")
    assert str(raised.value).startswith(message)


def test_a_folder_is_named_by_a_slash_an_existing_folder_or_no_extension(tmp_path: Path) -> None:
    (tmp_path / "existing").mkdir()
    (tmp_path / "result").write_bytes(b"a file without an extension")
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")  # dangling: not a new folder
    assert names_folder(f"{tmp_path}/new/")
    assert names_folder(tmp_path / "existing")
    assert names_folder(tmp_path / "masks")
    assert not names_folder(tmp_path / "mask.png")
    assert not names_folder(tmp_path / "new.d" / "mask.png")
    assert not names_folder(tmp_path / "result")
    assert not names_folder(tmp_path / "link")
    assert not names_folder("/dev/stdout")


def test_make_folder_creates_parents_and_refuses_a_file(tmp_path: Path) -> None:
    assert make_folder(tmp_path / "a" / "b", "--out") == tmp_path / "a" / "b"
    assert (tmp_path / "a" / "b").is_dir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match=r"--out .*file is a file; give a folder"):
        make_folder(tmp_path / "file", "--out")


def test_an_output_on_an_input_or_in_a_dataset_is_refused(tmp_path: Path) -> None:
    truth = tmp_path / "truth"
    truth.mkdir()
    label = truth / "q_mask.png"
    label.write_bytes(b"png")
    support = tmp_path / "cat.png"
    support.write_bytes(b"png")
    root = tmp_path / "mine"
    (tmp_path / "alias").symlink_to(truth)
    inputs = {"--labels": [truth, label], "--support": [support], "--model": [None]}
    trees = {"--data-root": [root]}
    cases = {
        truth: f"--out {truth} is --labels {truth}",
        label: f"--out {label} is --labels {label}",
        tmp_path / "alias" / "q_mask.png": f"is --labels {label}",  # through a link
        support: f"--out {support} is --support {support}",
        root / "run": f"--out {root / 'run'} lies inside --data-root {root}",
        root / "a" / "b.json": "lies inside --data-root",
    }
    for output, message in cases.items():
        with pytest.raises(InputError) as raised:
            refuse_inputs({"--out": [None, output]}, inputs, trees=trees)
        assert message in str(raised.value)
        assert str(raised.value).endswith(
            ": dpnet never writes over or into its inputs; choose another --out"
        )
    # A new file or folder beside the inputs, above them, or a name that only starts alike.
    for output in (truth / "r_mask.png", truth / "masks", tmp_path, tmp_path / "truth2",
                   tmp_path / "cat.png.out", tmp_path / "mine2"):  # fmt: skip
        refuse_inputs({"--out": [output]}, inputs, trees=trees)


def test_an_output_folder_must_not_hold_the_inputs(tmp_path: Path) -> None:
    query = tmp_path / "photos" / "q.jpg"
    query.parent.mkdir()
    query.write_bytes(b"jpg")
    with pytest.raises(InputError, match=r"--out .*photos holds --query .*q.jpg: dpnet does not"):
        refuse_folder_holding(tmp_path / "photos", "--out", {"--query": [query]})
    refuse_folder_holding(tmp_path / "photos" / "masks", "--out", {"--query": [query]})
    refuse_folder_holding(tmp_path, "--out", {"--query": [query]})


def test_files_the_command_did_not_write_stay_unless_asked(tmp_path: Path) -> None:
    copies = [tmp_path / name for name in ("a_fp16.onnx", "b_fp16.onnx", "c_fp16.onnx")]
    for copy in copies[:2]:
        copy.write_bytes(b"onnx")
    with pytest.raises(InputError) as raised:
        refuse_replacing(copies, "--out", "would go stale", action="remove them", overwrite=False)
    assert str(raised.value) == (
        f"--out {tmp_path} holds a_fp16.onnx, b_fp16.onnx, which would go stale; pass "
        "--overwrite to remove them, or choose another --out"
    )
    refuse_replacing(copies, "--out", "would go stale", action="remove them", overwrite=True)
    refuse_replacing(copies[2:], "--out", "would go stale", action="remove them", overwrite=False)
    assert all(copy.exists() for copy in copies[:2])  # checking never removes anything


def test_a_file_output_is_checked_for_format_and_place(tmp_path: Path) -> None:
    model = tmp_path / "out"
    model.mkdir()
    check_file_output("--json", None, JSON_FORMATS, {"--model": [model]})  # not asked for
    check_file_output("--json", tmp_path / "r.json", JSON_FORMATS, {"--model": [model]})
    with pytest.raises(OptionError, match=r"name it \.json"):
        check_file_output("--json", tmp_path / "r.csv", JSON_FORMATS, {"--model": [model]})
    with pytest.raises(InputError, match=r"--json .*out is --model .*out: "):
        check_file_output("--json", model, JSON_FORMATS, {"--model": [model]})
    with pytest.raises(InputError, match=r"--json .*out/r.json lies inside --data-root .*out: "):
        check_file_output(
            "--json", model / "r.json", JSON_FORMATS, {}, trees={"--data-root": [model]}
        )
    assert sorted(os.listdir(tmp_path)) == ["out"]
