"""`dpnet-export trt` without TensorRT: ranges, workspace, profiles, the version branch, errors."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from dpnet_export.engine_precision import plan_precision
from dpnet_export.onnx_to_engine import (
    EngineBuildOptions,
    ShapeRange,
    build_profiles,
    installed_tensorrt_version,
    onnx_input_shapes,
    onnx_to_engine,
    onnx_to_trtexec,
    parse_shape_range,
    parse_workspace,
)
from dpnet_runtime import contract
from dpnet_runtime.backends.trt_sidecar import TensorProfile
from dpnet_runtime.errors import (
    BackendUnavailableError,
    IncompatibleModelError,
    InputError,
    ModelFileError,
)

no_tensorrt = pytest.mark.skipif(
    installed_tensorrt_version() is not None, reason="TensorRT is installed here"
)


def _episode_onnx(path: Path, size: int = 8, precision: str | None = None) -> Path:
    """A stand-in for dpnet.onnx with the contract's inputs: dynamic B and K, fixed H x W, and
    the precision its name says (``dpnet_fp16.onnx``: fp16), as the exporter records it."""
    f32 = TensorProto.FLOAT
    inputs = [
        helper.make_tensor_value_info(contract.SUPPORT_IMAGES, f32, ["B", "K", 3, size, size]),
        helper.make_tensor_value_info(contract.SUPPORT_MASKS, f32, ["B", "K", size, size]),
        helper.make_tensor_value_info(contract.QUERY_IMAGE, f32, ["B", 3, size, size]),
    ]
    nodes = [helper.make_node("Relu", [contract.QUERY_IMAGE], [contract.LOGITS])]
    outputs = [helper.make_tensor_value_info(contract.LOGITS, f32, None)]
    graph = helper.make_graph(nodes, "episode", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    if precision is None:
        precision = next(
            (row.precision for row in contract.FORMATS.values()
             if row.artifact != "checkpoint" and row.onnx_name("episode") == path.name),
            "fp32",
        )  # fmt: skip
    helper.set_model_props(model, {contract.META_PRECISION: precision})
    onnx.save(model, path)
    return path


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1:1:5", ShapeRange(1, 1, 5)), ("2:3:4", ShapeRange(2, 3, 4)), ("3", ShapeRange(3, 3, 3))],
)
def test_parse_shape_range(text: str, expected: ShapeRange) -> None:
    assert parse_shape_range(text) == expected


@pytest.mark.parametrize("text", ["", "1:5", "a:b:c", "5:1:1", "0:1:2", "1:6:5", "-1:1:2"])
def test_parse_shape_range_rejects(text: str) -> None:
    with pytest.raises(InputError, match="min"):
        parse_shape_range(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("4G", 4 << 30), ("512M", 512 << 20), ("1024", 1024), ("2GiB", 2 << 30), ("64k", 64 << 10)],
)
def test_parse_workspace(text: str, expected: int) -> None:
    assert parse_workspace(text) == expected


@pytest.mark.parametrize("text", ["", "0", "4X", "-1G", "1.5G"])
def test_parse_workspace_rejects(text: str) -> None:
    with pytest.raises(InputError, match="workspace"):
        parse_workspace(text)


def test_profiles_from_cli_ranges(tmp_path: Path) -> None:
    shapes = onnx_input_shapes(_episode_onnx(tmp_path / "dpnet.onnx"))
    profiles = build_profiles(
        shapes, batch=parse_shape_range("1:2:4"), shots=parse_shape_range("1:1:5")
    )
    assert profiles == (
        TensorProfile(contract.SUPPORT_IMAGES, (1, 1, 3, 8, 8), (2, 1, 3, 8, 8), (4, 5, 3, 8, 8)),
        TensorProfile(contract.SUPPORT_MASKS, (1, 1, 8, 8), (2, 1, 8, 8), (4, 5, 8, 8)),
        TensorProfile(contract.QUERY_IMAGE, (1, 3, 8, 8), (2, 3, 8, 8), (4, 3, 8, 8)),
    )


def test_profiles_cover_the_support_cache_and_keep_static_axes() -> None:
    shapes = {contract.PROTOTYPES: ("B", "K", 256), contract.QUERY_IMAGE: (1, 3, 8, 8)}
    profiles = build_profiles(shapes, batch=ShapeRange(1, 2, 3), shots=ShapeRange(2, 3, 4))
    assert profiles[0] == TensorProfile(contract.PROTOTYPES, (1, 2, 256), (2, 3, 256), (3, 4, 256))
    assert profiles[1].min == profiles[1].max == (1, 3, 8, 8)


def test_profiles_reject_other_dynamic_axes() -> None:
    with pytest.raises(ModelFileError, match="axis 2"):
        build_profiles(
            {contract.QUERY_IMAGE: ("B", 3, "H", 8)},
            batch=ShapeRange(1, 1, 1),
            shots=ShapeRange(1, 1, 1),
        )


@pytest.mark.parametrize(
    ("version", "precision", "weak", "expected"),
    [
        # FP16 is strongly typed from the FP16 graph on 10 and 11 alike.
        ("10.15.1.29", "fp16", False, ("dpnet_fp16.onnx", "fp16", True, ())),
        ("10.15.1.29", "fp16", True, ("dpnet.onnx", "fp16", False, ("FP16",))),
        ("10.3.0", "fp32", False, ("dpnet.onnx", "fp32", False, ())),
        ("11.0.0", "fp16", False, ("dpnet_fp16.onnx", "fp16", True, ())),
        ("11.4.1", "fp32", False, ("dpnet.onnx", "fp32", True, ())),
    ],
)
def test_version_branch(
    tmp_path: Path, version: str, precision: str, weak: bool, expected: tuple[object, ...]
) -> None:
    _episode_onnx(tmp_path / "dpnet.onnx")
    _episode_onnx(tmp_path / "dpnet_fp16.onnx")
    plan = plan_precision(tmp_path, precision=precision, tensorrt_version=version, weak_typing=weak)
    got = (plan.onnx_path.name, plan.precision, plan.strongly_typed, plan.builder_flags)
    assert got == expected and plan.tf32 is False


def test_each_precision_builds_from_the_graph_of_its_row(tmp_path: Path) -> None:
    for name in ("dpnet.onnx", "dpnet_fp16.onnx", "dpnet_int8_trt.onnx"):
        _episode_onnx(tmp_path / name)
    sources = {
        precision: plan_precision(tmp_path, precision=precision, tensorrt_version="11.1").onnx_path
        for precision in ("fp32", "fp16", "int8")
    }
    assert {p: path.name for p, path in sources.items()} == {
        "fp32": "dpnet.onnx",
        "fp16": "dpnet_fp16.onnx",
        "int8": "dpnet_int8_trt.onnx",
    }
    engines = {p: EngineBuildOptions(tmp_path, precision=p).engine_path.name for p in sources}
    assert engines == {
        "fp32": "dpnet.engine",
        "fp16": "dpnet_fp16.engine",
        "int8": "dpnet_int8.engine",
    }


def test_a_source_graph_recording_another_precision_is_refused(tmp_path: Path) -> None:
    # An FP32 graph copied over dpnet_fp16.onnx: refused before TensorRT spends minutes on it.
    _episode_onnx(tmp_path / "dpnet_fp16.onnx", precision="fp32")
    with pytest.raises(IncompatibleModelError, match=r"records precision fp32 but fp16 engines"):
        plan_precision(tmp_path, precision="fp16", tensorrt_version="10.15.1")


@pytest.mark.parametrize(
    ("version", "precision", "match"),
    [
        ("11.0.0", "fp16", "only TensorRT 10"),  # no weak typing in 11
        ("10.15.1", "fp32", "not fp32"),
        ("10.15.1", "int8", "not int8"),  # calibrated: would need a calibrator
        ("10.15.1", "int4", r"backend 'trt' has no 'int4' format; choose one of fp32 \(trt\)"),
    ],
)
def test_weak_typing_and_unknown_precisions_are_input_errors(
    tmp_path: Path, version: str, precision: str, match: str
) -> None:
    _episode_onnx(tmp_path / "dpnet.onnx")
    with pytest.raises(InputError, match=match):
        plan_precision(tmp_path, precision=precision, tensorrt_version=version, weak_typing=True)


def test_version_branch_errors(tmp_path: Path) -> None:
    _episode_onnx(tmp_path / "dpnet.onnx")
    for version in ("11.0.0", "10.15.1"):  # no FP16 graph: strongly typed FP16 cannot build
        with pytest.raises(InputError, match=r"dpnet-export onnx .* --precision fp16"):
            plan_precision(tmp_path, precision="fp16", tensorrt_version=version)
    with pytest.raises(InputError, match="TensorRT 10 or newer"):
        plan_precision(tmp_path, precision="fp16", tensorrt_version="8.6.1")
    with pytest.raises(InputError, match="not a TensorRT version"):
        plan_precision(tmp_path, precision="fp16", tensorrt_version="latest")


def test_non_onnx_file_is_one_clear_error(tmp_path: Path) -> None:
    junk = tmp_path / "dpnet.onnx"
    junk.write_bytes(b"\x08\x07garbage that is not ONNX" * 4)
    with pytest.raises(ModelFileError, match=r"dpnet\.onnx"):
        onnx_input_shapes(junk)
    with pytest.raises(ModelFileError, match="does not exist"):
        onnx_input_shapes(tmp_path / "missing.onnx")


def test_trtexec_for_options(tmp_path: Path) -> None:
    fp32 = _episode_onnx(tmp_path / "dpnet.onnx")
    options = EngineBuildOptions(
        tmp_path, precision="fp16", weak_typing=True, workspace_bytes=parse_workspace("2G")
    )
    command = onnx_to_trtexec(options, tensorrt_version="10.15.1")
    assert f"--onnx={fp32}" in command and "--fp16" in command and "--noTF32" in command
    assert f"--saveEngine={tmp_path / 'dpnet_fp16.engine'}" in command
    max_shapes = "support_images:8x5x3x8x8,support_masks:8x5x8x8,query_image:8x3x8x8"
    assert f"--maxShapes={max_shapes}" in command
    assert "--memPoolSize=workspace:2048" in command and "--stronglyTyped" not in command


@no_tensorrt
def test_build_without_tensorrt_names_the_extra(tmp_path: Path) -> None:
    _episode_onnx(tmp_path / "dpnet_fp16.onnx")
    options = EngineBuildOptions(tmp_path, precision="fp16")
    with pytest.raises(BackendUnavailableError, match=r"pip install 'dpnet\[trt\]'"):
        onnx_to_engine(options)


@pytest.mark.slow
@no_tensorrt
def test_trt_cli_without_tensorrt(
    tmp_path: Path, export_cli: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    _episode_onnx(tmp_path / "dpnet.onnx")
    _episode_onnx(tmp_path / "dpnet_fp16.onnx")
    model = str(tmp_path)
    build = export_cli("trt", "--model", model, "--precision", "fp16")
    assert build.returncode == 1
    assert build.stderr.count("\n") == 1 and "TensorRT is not installed" in build.stderr
    assert "pip install 'dpnet[trt]'" in build.stderr
    printed = export_cli(
        "trt", "--model", model, "--precision", "fp16", "--print-trtexec", "--shots-range", "1:2:3"
    )
    assert printed.returncode == 0, printed.stderr
    assert "dpnet_fp16.onnx" in printed.stdout and "--stronglyTyped" in printed.stdout
    assert "dpnet_fp16.engine" in printed.stdout and "support_images:1x2x3x8x8" in printed.stdout
    bad_range = export_cli("trt", "--model", model, "--shots-range", "5:1:1", "--print-trtexec")
    assert bad_range.returncode == 2 and "min <= opt <= max" in bad_range.stderr  # usage
    help_text = export_cli("trt", "--help").stdout
    assert "fp32 | fp16 | int8" in help_text and "--fp16" not in help_text


@pytest.mark.parametrize("version", ["10.3.0", "11.1.0"])
def test_int8_plan_is_the_qdq_graph_strongly_typed(tmp_path: Path, version: str) -> None:
    _episode_onnx(tmp_path / "dpnet.onnx")
    with pytest.raises(InputError, match=r"dpnet-export onnx .* --precision int8"):
        plan_precision(tmp_path, precision="int8", tensorrt_version=version)
    qdq = _episode_onnx(tmp_path / "dpnet_int8_trt.onnx")
    plan = plan_precision(tmp_path, precision="int8", tensorrt_version=version)
    assert (plan.onnx_path, plan.precision, plan.strongly_typed, plan.builder_flags) == (
        qdq,
        "int8",
        True,
        (),
    )


def test_trtexec_for_int8_is_the_strongly_typed_qdq_build(tmp_path: Path) -> None:
    _episode_onnx(tmp_path / "dpnet.onnx")
    qdq = _episode_onnx(tmp_path / "dpnet_int8_trt.onnx")
    options = EngineBuildOptions(tmp_path, precision="int8")
    command = onnx_to_trtexec(options, tensorrt_version="10.15.1")
    assert f"--onnx={qdq}" in command and "--stronglyTyped" in command
    assert f"--saveEngine={tmp_path / 'dpnet_int8.engine'}" in command
    assert "--int8" not in command and "--fp16" not in command


@pytest.mark.slow
def test_trt_cli_int8_precision(
    tmp_path: Path, export_cli: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    _episode_onnx(tmp_path / "dpnet.onnx")
    model = str(tmp_path)
    unknown = export_cli("trt", "--model", model, "--precision", "int4", "--print-trtexec")
    assert unknown.returncode == 2 and "no 'int4' format; choose one of fp32" in unknown.stderr
    missing = export_cli("trt", "--model", model, "--precision", "int8", "--print-trtexec")
    assert missing.returncode == 1 and "--precision int8` first" in missing.stderr
    _episode_onnx(tmp_path / "dpnet_int8_trt.onnx")
    printed = export_cli("trt", "--model", model, "--precision", "int8", "--print-trtexec")
    assert printed.returncode == 0, printed.stderr
    assert "dpnet_int8_trt.onnx" in printed.stdout and "dpnet_int8.engine" in printed.stdout


def test_the_cli_defaults_are_the_options_defaults() -> None:
    import inspect

    from dpnet_export.cli import trt_cmd

    parameters = inspect.signature(trt_cmd.command).parameters
    defaults = EngineBuildOptions(Path("out"))
    assert parse_shape_range(parameters["batch_range"].default) == defaults.batch
    assert parse_shape_range(parameters["shots_range"].default) == defaults.shots
    assert parameters["precision"].default == defaults.precision
    assert defaults.batch.max >= 8  # dpnet-serve's default --max-batch fits a default engine
