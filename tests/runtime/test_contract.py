"""The contract tables: pinned facts, derived helpers, and consumers that follow a change.

The literal values here restate the I/O contract of docs/runtime.md on purpose: a change to
``dpnet_runtime.contract`` that breaks C++ callers must fail a test.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import pytest

from dpnet_bench.subjects import TorchRunner
from dpnet_export.onnx_to_engine import ShapeRange, build_profiles
from dpnet_runtime import contract
from dpnet_runtime.artifacts import read_graph_info
from dpnet_runtime.backends.trt import tensor_spec
from dpnet_runtime.contract import FORMATS, GRAPHS, find_format
from dpnet_runtime.errors import IncompatibleModelError


def test_graph_files_and_io_names_are_the_documented_ones() -> None:
    assert {role: spec.file for role, spec in GRAPHS.items()} == {
        "episode": "dpnet.onnx",
        "support": "dpnet_support.onnx",
        "query": "dpnet_query.onnx",
    }
    head = ("logits", "mask", "pseudo_count", "confidence")
    cache = ("support_cos_feats", "support_fg", "prototypes")
    assert GRAPHS["episode"].input_names == ("support_images", "support_masks", "query_image")
    assert GRAPHS["episode"].output_names == head
    assert GRAPHS["support"].input_names == ("support_images", "support_masks")
    assert GRAPHS["support"].output_names == cache
    assert GRAPHS["query"].input_names == ("query_image", *cache)
    assert GRAPHS["query"].output_names == head


def test_bind_fixes_side_feature_side_and_channels() -> None:
    inputs, outputs = GRAPHS["query"].bind(size=321, channels=256)
    assert inputs["query_image"].shape == ("B", 3, 321, 321)
    assert inputs["support_cos_feats"].shape == ("B", "K", 1024, 41, 41)
    assert inputs["prototypes"].shape == ("B", "K", 256)
    assert (outputs["mask"].dtype, outputs["mask"].shape) == ("uint8", ("B", 321, 321))
    assert (outputs["pseudo_count"].dtype, outputs["pseudo_count"].shape) == ("int32", ("B",))
    assert outputs["confidence"].shape == ("B", "K", 41, 41)
    raw, _ = GRAPHS["episode"].bind(size=129, channels=64, raw_input=True)
    assert (raw["support_images"].dtype, raw["support_images"].shape) == (
        "uint8",
        ("B", "K", 129, 129, 3),
    )
    assert (raw["support_masks"].dtype, raw["query_image"].shape) == ("uint8", ("B", 129, 129, 3))


def test_format_rows_name_their_files() -> None:
    assert [FORMATS[name].file_name(role) for name in ("ort", "ort-fp16") for role in GRAPHS] == [
        "dpnet.onnx",
        "dpnet_support.onnx",
        "dpnet_query.onnx",
        "dpnet_fp16.onnx",
        "dpnet_support_fp16.onnx",
        "dpnet_query_fp16.onnx",
    ]
    assert FORMATS["trt"].file_name("episode") == "dpnet.engine"
    assert FORMATS["trt"].roles == ("episode",) and FORMATS["torch"].roles == ()
    with pytest.raises(ValueError, match="no support file"):
        FORMATS["trt"].file_name("support")


def test_one_row_per_backend_and_precision_each_with_its_own_files() -> None:
    assert [(row.backend, row.precision) for row in FORMATS.values()] == [
        ("torch", "fp32"), ("torch", "fp16"),
        ("ort", "fp32"), ("ort", "fp16"), ("ort", "int8"),
        ("trt", "fp32"), ("trt", "fp16"), ("trt", "int8"),
    ]  # fmt: skip
    assert list(FORMATS) == [
        "torch", "torch-fp16", "ort", "ort-fp16", "ort-int8", "trt", "trt-fp16", "trt-int8",
    ]  # fmt: skip
    engines = {name: FORMATS[name].file_name("episode") for name in ("trt", "trt-fp16", "trt-int8")}
    assert engines == {
        "trt": "dpnet.engine",
        "trt-fp16": "dpnet_fp16.engine",
        "trt-int8": "dpnet_int8.engine",
    }
    sources = {name: FORMATS[name].onnx_name("episode") for name in engines}
    assert sources == {
        "trt": "dpnet.onnx",
        "trt-fp16": "dpnet_fp16.onnx",
        "trt-int8": "dpnet_int8_trt.onnx",
    }
    files = [row.file_name(role) for row in FORMATS.values() for role in row.roles]
    assert len(files) == len(set(files))  # no two rows share a file


def test_int8_rows_name_their_graphs_and_the_engine_source() -> None:
    assert [FORMATS["ort-int8"].file_name(role) for role in GRAPHS] == [
        "dpnet_int8.onnx",
        "dpnet_support_int8.onnx",
        "dpnet_query_int8.onnx",
    ]
    trt = FORMATS["trt-int8"]
    assert (trt.backend, trt.precision, trt.file_name("episode")) == (
        "trt",
        "int8",
        "dpnet_int8.engine",
    )
    assert [trt.onnx_name(role) for role in GRAPHS] == [
        "dpnet_int8_trt.onnx",
        "dpnet_support_int8_trt.onnx",
        "dpnet_query_int8_trt.onnx",
    ]
    assert FORMATS["trt-fp16"].onnx_name("episode") == "dpnet_fp16.onnx"
    assert FORMATS["ort-int8"].onnx_name("query") == "dpnet_query_int8.onnx"
    assert find_format("ort", "int8").name == "ort-int8" and find_format("trt", "int8") is trt
    assert contract.SOURCE_PRECISION == "fp32"
    with pytest.raises(ValueError, match="reads no ONNX graph"):
        FORMATS["torch"].onnx_name("episode")


def test_find_format_picks_the_backend_row_or_lists_the_choices() -> None:
    assert find_format("ort").name == "ort"
    assert find_format("ort", "fp16").name == "ort-fp16"
    assert find_format("trt").name == "trt" and find_format("trt").precision == "fp32"
    with pytest.raises(ValueError, match=r"choose one of fp32 \(ort\), fp16 \(ort-fp16\)"):
        find_format("ort", "int4")
    with pytest.raises(ValueError, match="unknown backend 'tflite'"):
        find_format("tflite")


def test_the_shots_axis_is_on_the_support_inputs_and_cache() -> None:
    shots = {
        spec.name
        for graph in GRAPHS.values()
        for spec in graph.inputs
        if contract.symbolic_axis(spec.name, 1) == contract.SHOTS_AXIS
    }
    assert shots == {
        "support_images",
        "support_masks",
        "support_cos_feats",
        "support_fg",
        "prototypes",
    }
    assert contract.symbolic_axis("query_image", 0) == "B"
    assert contract.symbolic_axis("query_image", 1) is None
    assert contract.symbolic_axis("no_such_tensor", 0) is None


def _renamed(spec: contract.GraphSpec, old: str, new: str) -> contract.GraphSpec:
    def rename(tensors: tuple[contract.TensorSpec, ...]) -> tuple[contract.TensorSpec, ...]:
        return tuple(
            dataclasses.replace(tensor, name=new) if tensor.name == old else tensor
            for tensor in tensors
        )

    return dataclasses.replace(spec, inputs=rename(spec.inputs), outputs=rename(spec.outputs))


@pytest.fixture
def renamed_contract(monkeypatch: pytest.MonkeyPatch) -> None:
    """GRAPHS with ``pseudo_count`` -> ``pseudo_size`` and ``support_fg`` -> ``support_labels``."""
    for role, spec in GRAPHS.items():
        spec = _renamed(
            _renamed(spec, "pseudo_count", "pseudo_size"), "support_fg", "support_labels"
        )
        monkeypatch.setitem(GRAPHS, role, spec)


@pytest.mark.usefixtures("renamed_contract")
def test_a_name_changed_in_graphs_alone_reaches_the_runtime_checks_trt_axes_and_fake_graphs(
    make_fake_export_dir,
) -> None:
    # TensorRT: the renamed cache input still gets the K axis in specs and profiles.
    assert contract.symbolic_axis("support_labels", 1) == contract.SHOTS_AXIS
    assert tensor_spec("support_labels", "float32", (-1, -1, 5, 5)).shape == ("B", "K", 5, 5)
    profile = build_profiles(
        {"support_labels": (-1, -1, 5, 5)}, batch=ShapeRange(1, 2, 3), shots=ShapeRange(1, 3, 5)
    )
    assert (profile[0].min, profile[0].max) == ((1, 1, 5, 5), (3, 5, 5, 5))
    # The fake test graphs are built from GRAPHS, so they carry the new names.
    folder = make_fake_export_dir()
    query = onnx.load(folder / "dpnet_query.onnx")
    assert "support_labels" in [value.name for value in query.graph.input]
    assert "pseudo_size" in [value.name for value in query.graph.output]
    # The runtime's graph check asks for the new names: an old-style spec set is refused.
    old_outputs = {
        name: contract.TensorSpec(name, "float32", ("B",))
        for name in ("logits", "mask", "pseudo_count", "confidence")
    }
    inputs = {name: contract.TensorSpec(name, "float32", ("B",)) for name in ("query_image",)}
    # The new names are missing, the old ones are not asked for.
    expected = (
        r"missing inputs \['support_cos_feats', 'support_labels', 'prototypes'\], "
        r"outputs \['pseudo_size'\]"
    )
    with pytest.raises(IncompatibleModelError, match=expected):
        read_graph_info("query", Path("q.onnx"), inputs, old_outputs, {})


@pytest.mark.usefixtures("renamed_contract")
def test_a_name_changed_in_graphs_alone_reaches_the_torch_bench_runner(
    tiny_checkpoint: Path,
) -> None:
    with TorchRunner(tiny_checkpoint, graph="query") as runner:
        assert "support_labels" in runner.get_input_metadata()
        assert list(runner.get_output_metadata()) == [
            "logits",
            "mask",
            "pseudo_size",
            "confidence",
        ]
        rng = np.random.default_rng(0)
        specs = runner.get_input_metadata()
        feed = {
            name: rng.random([2 if isinstance(d, str) else d for d in spec.shape], np.float32)
            for name, spec in specs.items()
        }
        outputs = runner.infer(feed)
    assert outputs["pseudo_size"].dtype == np.int32
