"""Every exported graph's inputs and outputs are exactly those of ``contract.GRAPHS``."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from dpnet_runtime.contract import FORMATS, GRAPHS, TensorSpec

TINY_SIZE, TINY_CHANNELS = 129, 64  # the tiny preset
RAW_SIZE = 65  # small_raw_export (tests/conftest.py)
# The exporter names the dynamic axes after torch.export's Dims.
_AXIS_NAMES = {"batch": "B", "shots": "K"}


def _io(values: list[onnx.ValueInfoProto]) -> list[TensorSpec]:
    specs = []
    for value in values:
        tensor = value.type.tensor_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
        shape = tuple(
            _AXIS_NAMES.get(d.dim_param, d.dim_param) or d.dim_value for d in tensor.shape.dim
        )
        specs.append(TensorSpec(value.name, dtype, shape))
    return specs


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["ort", "ort-fp16"])
@pytest.mark.parametrize("raw_input", [False, True], ids=["float", "raw"])
def test_exported_io_equals_graphs_table(
    fmt: str, raw_input: bool, tiny_export_dir: Path, small_raw_export: Path
) -> None:
    folder, size = (small_raw_export, RAW_SIZE) if raw_input else (tiny_export_dir, TINY_SIZE)
    _assert_io_is_the_contracts(folder, fmt, size, raw_input)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["ort-int8", "trt-int8"])
def test_int8_graphs_io_equals_graphs_table(fmt: str, tiny_segmenting_export_dir: Path) -> None:
    # The QDQ graphs of both flavours keep the float graphs' I/O: FP32 in, the same outputs.
    _assert_io_is_the_contracts(tiny_segmenting_export_dir, fmt, TINY_SIZE, raw_input=False)


def _assert_io_is_the_contracts(folder: Path, fmt: str, size: int, raw_input: bool) -> None:
    for role, spec in GRAPHS.items():
        model = onnx.load(folder / FORMATS[fmt].onnx_name(role))
        inputs, outputs = spec.bind(size=size, channels=TINY_CHANNELS, raw_input=raw_input)
        where = f"{fmt} {role} raw={raw_input}"
        assert _io(list(model.graph.input)) == list(inputs.values()), where
        assert _io(list(model.graph.output)) == list(outputs.values()), where
