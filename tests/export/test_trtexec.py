"""The equivalent trtexec command line."""

from __future__ import annotations

import shlex
from pathlib import Path

from dpnet_export.trtexec import format_shapes, trtexec_command
from dpnet_runtime.backends.trt import TensorProfile

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
        fp16_flag=True,
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
        "--timingCacheFile=cache dir/timing.cache",
    ]


def test_strongly_typed_command_has_no_fp16_flag() -> None:
    command = trtexec_command(
        onnx_path=Path("dpnet_fp16.onnx"),
        engine_path=Path("dpnet.engine"),
        profiles=(),
        strongly_typed=True,
        fp16_flag=False,
        workspace_bytes=1 << 20,
    )
    assert command == (
        "trtexec --onnx=dpnet_fp16.onnx --saveEngine=dpnet.engine "
        "--memPoolSize=workspace:1 --stronglyTyped"
    )
