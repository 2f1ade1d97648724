"""The equivalent trtexec command line."""

from __future__ import annotations

import shlex
from pathlib import Path

from dpnet_export.trtexec import format_shapes, trtexec_command
from dpnet_runtime.backends.trt_sidecar import TensorProfile

PROFILES = (
    TensorProfile("support_images", (1, 1, 3, 321, 321), (1, 1, 3, 321, 321), (4, 5, 3, 321, 321)),
    TensorProfile("query_image", (1, 3, 321, 321), (1, 3, 321, 321), (4, 3, 321, 321)),
)


def test_format_shapes() -> None:
    assert format_shapes(PROFILES, "max") == "support_images:4x5x3x321x321,query_image:4x3x321x321"


def test_tensorrt10_fp16_flag_command() -> None:
    command = trtexec_command(
        onnx_path=Path("out/dpnet.onnx"),
        engine_path=Path("out/dpnet.engine"),
        profiles=PROFILES,
        strongly_typed=False,
        builder_flags=("FP16",),
        workspace_bytes=(4 << 30) + 1,
        timing_cache=Path("cache dir/timing.cache"),
    )
    assert shlex.split(command) == [
        "trtexec",
        "--onnx=out/dpnet.onnx",
        "--saveEngine=out/dpnet.engine",
        "--minShapes=support_images:1x1x3x321x321,query_image:1x3x321x321",
        "--optShapes=support_images:1x1x3x321x321,query_image:1x3x321x321",
        "--maxShapes=support_images:4x5x3x321x321,query_image:4x3x321x321",
        "--memPoolSize=workspace:4097",
        "--fp16",
        "--noTF32",
        "--timingCacheFile=cache dir/timing.cache",
    ]


def test_strongly_typed_command_has_no_fp16_flag() -> None:
    command = trtexec_command(
        onnx_path=Path("dpnet_fp16.onnx"),
        engine_path=Path("dpnet.engine"),
        profiles=(),
        strongly_typed=True,
        workspace_bytes=1 << 20,
    )
    assert command == (
        "trtexec --onnx=dpnet_fp16.onnx --saveEngine=dpnet.engine "
        "--memPoolSize=workspace:1 --stronglyTyped --noTF32"
    )


def test_tf32_is_disabled_unless_asked_for() -> None:
    # trtexec prints "TF32 is enabled by default. Add --noTF32 to disable."
    common = {"onnx_path": Path("m.onnx"), "engine_path": Path("m.engine"), "profiles": ()}
    off = trtexec_command(**common, strongly_typed=False, workspace_bytes=1 << 20)
    on = trtexec_command(**common, strongly_typed=False, workspace_bytes=1 << 20, tf32=True)
    assert off.split()[-1] == "--noTF32" and "--noTF32" not in on
