"""dpnet-export triton: the model repository matches the ONNX graphs, every config parses with
Triton's own schema (and a planted bad field does not), and the BLS model, run against a fake
``triton_python_backend_utils`` whose requests run the repository's graphs with ONNX Runtime,
gives the graphs' own masks."""

from __future__ import annotations

import asyncio
import importlib.util
import shutil
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

from dpnet_export.onnx_to_triton import TritonOptions, onnx_to_triton, validate_repository
from dpnet_runtime import Predictor
from dpnet_runtime.errors import ExportError, InputError, ModelFileError
from dpnet_runtime.preprocess import prepare_query, prepare_support

from .conftest import RunCli

_ORT_TYPES = {
    "tensor(float)": "TYPE_FP32",
    "tensor(uint8)": "TYPE_UINT8",
    "tensor(int32)": "TYPE_INT32",
}
_GRAPHS = {"dpnet_support": "dpnet_support.onnx", "dpnet_query": "dpnet_query.onnx"}


def _config(path: Path) -> Any:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def _expected_tensors(nodes: list[Any]) -> list[tuple[str, str, list[int]]]:
    # What Triton needs from the graph itself: batch axis left out, dynamic axes -1.
    return [
        (
            node.name,
            _ORT_TYPES[node.type],
            [dim if isinstance(dim, int) else -1 for dim in node.shape[1:]] or [1],
        )
        for node in nodes
    ]


def _tensors(entries: Any) -> list[tuple[str, str, list[int]]]:
    return [
        (entry.name, model_config_pb2.DataType.Name(entry.data_type), list(entry.dims))
        for entry in entries
    ]


@pytest.fixture(scope="module")
def repo(tiny_export_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("triton") / "repo"
    result = onnx_to_triton(tiny_export_dir, folder, TritonOptions(kind="KIND_CPU"))
    assert result.validated and result.to_build == ()
    return folder


def test_graph_models_match_the_onnx_files(repo: Path, tiny_export_dir: Path) -> None:
    for model, file in _GRAPHS.items():
        config = _config(repo / model / "config.pbtxt")
        session = ort.InferenceSession(
            str(tiny_export_dir / file), providers=["CPUExecutionProvider"]
        )
        assert (config.name, config.platform, config.max_batch_size) == (
            model,
            "onnxruntime_onnx",
            8,
        )
        assert _tensors(config.input) == _expected_tensors(session.get_inputs())
        assert _tensors(config.output) == _expected_tensors(session.get_outputs())
        assert config.dynamic_batching.max_queue_delay_microseconds == 5000
        assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
        copied = repo / model / "1" / "model.onnx"
        assert copied.read_bytes() == (tiny_export_dir / file).read_bytes()
    scalar = [
        o for o in _config(repo / "dpnet_query" / "config.pbtxt").output if o.name == "pseudo_count"
    ]
    assert (
        list(scalar[0].dims) == [1]
        and scalar[0].HasField("reshape")
        and not scalar[0].reshape.shape
    )


def test_bls_model_config(repo: Path) -> None:
    config = _config(repo / "dpnet" / "config.pbtxt")
    assert (config.backend, config.max_batch_size) == ("python", 0)
    optional = {entry.name for entry in config.input if entry.optional}
    assert optional == {"support_images", "support_masks", "query_image"}
    assert (
        config.parameters["cache_names"].string_value == "support_cos_feats,support_fg,prototypes"
    )
    assert (repo / "dpnet" / "1" / "model.py").is_file()


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("max_batch_size", "max_batch_sise", "max_batch_sise"),
        ("TYPE_FP32", "TYPE_FLOAT32", "TYPE_FLOAT32"),
        ("dims: [ -1", "dims: [ -1.5", "dims"),
    ],
)
def test_a_planted_bad_field_fails_the_schema(
    repo: Path, tmp_path: Path, old: str, new: str, message: str
) -> None:
    planted = tmp_path / "repo"
    shutil.copytree(repo, planted)
    config = planted / "dpnet_query" / "config.pbtxt"
    config.write_text(config.read_text().replace(old, new, 1))
    with pytest.raises(ExportError, match=rf"dpnet_query/config.pbtxt is not a valid .*{message}"):
        validate_repository(planted)
    assert validate_repository(repo)


def test_tensorrt_backend_leaves_the_plans_to_build_on_the_gpu(
    tiny_export_dir: Path, tmp_path: Path
) -> None:
    result = onnx_to_triton(tiny_export_dir, tmp_path / "repo", TritonOptions(backend="trt"))
    for model in _GRAPHS:
        assert _config(tmp_path / "repo" / model / "config.pbtxt").platform == "tensorrt_plan"
        assert not (tmp_path / "repo" / model / "1" / "model.onnx").exists()
    assert [
        (role, source.name, plan.relative_to(tmp_path)) for role, source, plan in result.to_build
    ] == [
        ("support", "dpnet_support.onnx", Path("repo/dpnet_support/1/model.plan")),
        ("query", "dpnet_query.onnx", Path("repo/dpnet_query/1/model.plan")),
    ]


@pytest.mark.parametrize(
    ("backend", "precision", "tag"),
    [("trt", "int8", "_int8_trt"), ("trt", "fp32", ""), ("ort", "int8", "_int8")],
)
def test_int8_repositories_take_the_graphs_of_their_backend(
    tiny_segmenting_export_dir: Path, tmp_path: Path, backend: str, precision: str, tag: str
) -> None:
    # TensorRT plans come from the symmetric QDQ graphs, ONNX Runtime serves its U8S8 ones.
    options = TritonOptions(backend=backend, precision=precision, kind="KIND_CPU")
    result = onnx_to_triton(tiny_segmenting_export_dir, tmp_path / "repo", options)
    sources = {model: tiny_segmenting_export_dir / f"{model}{tag}.onnx" for model in _GRAPHS}
    if backend == "trt":
        assert [source for _, source, _ in result.to_build] == list(sources.values())
    else:
        assert result.to_build == ()
        for model, source in sources.items():
            copied = tmp_path / "repo" / model / "1" / "model.onnx"
            assert copied.read_bytes() == source.read_bytes()


def test_fp16_plans_come_from_the_mixed_precision_graphs(
    tiny_export_dir: Path, tmp_path: Path
) -> None:
    options = TritonOptions(backend="trt", precision="fp16")
    result = onnx_to_triton(tiny_export_dir, tmp_path / "repo", options)
    assert [source.name for _, source, _ in result.to_build] == [
        "dpnet_support_fp16.onnx",
        "dpnet_query_fp16.onnx",
    ]


def test_an_unknown_precision_or_a_missing_copy_is_an_input_error(
    tiny_export_dir: Path, tmp_path: Path
) -> None:
    with pytest.raises(InputError, match="one of fp32, fp16, int8 on ort, got 'int4'"):
        TritonOptions(precision="int4")
    with pytest.raises(ModelFileError, match=r"dpnet_support_int8\.onnx"):
        onnx_to_triton(tiny_export_dir, tmp_path / "repo", TritonOptions(precision="int8"))


def _fake_triton(repo: Path) -> types.ModuleType:
    """A stand-in for Triton's ``triton_python_backend_utils``: BLS requests run the repository's
    ONNX models with ONNX Runtime."""
    sessions: dict[str, ort.InferenceSession] = {}

    class Tensor:
        def __init__(self, name: str, array: np.ndarray) -> None:
            self._name, self._array = name, array

        def name(self) -> str:
            return self._name

        def as_numpy(self) -> np.ndarray:
            return self._array

    class TritonError:
        def __init__(self, message: str) -> None:
            self._message = message

        def message(self) -> str:
            return self._message

    class InferenceResponse:
        def __init__(
            self, output_tensors: list[Tensor] = (), error: TritonError | None = None
        ) -> None:  # type: ignore[assignment]
            self.output_tensors, self._error = list(output_tensors), error

        def has_error(self) -> bool:
            return self._error is not None

        def error(self) -> TritonError | None:
            return self._error

    class InferenceRequest:
        def __init__(
            self, model_name: str, requested_output_names: list[str], inputs: list[Tensor]
        ) -> None:
            self.model, self.outputs, self.inputs = model_name, requested_output_names, inputs

        async def async_exec(self) -> InferenceResponse:
            path = repo / self.model / "1" / "model.onnx"
            session = sessions.setdefault(
                self.model, ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            )
            arrays = session.run(self.outputs, {t.name(): t.as_numpy() for t in self.inputs})
            return InferenceResponse(
                [Tensor(n, a) for n, a in zip(self.outputs, arrays, strict=True)]
            )

    module = types.ModuleType("triton_python_backend_utils")
    module.Tensor = Tensor  # type: ignore[attr-defined]
    module.TritonError = TritonError  # type: ignore[attr-defined]
    module.InferenceResponse = InferenceResponse  # type: ignore[attr-defined]
    module.InferenceRequest = InferenceRequest  # type: ignore[attr-defined]
    module.get_input_tensor_by_name = lambda request, name: request.get(name)  # type: ignore[attr-defined]
    module.get_output_tensor_by_name = lambda response, name: next(  # type: ignore[attr-defined]
        (t for t in response.output_tensors if t.name() == name), None
    )
    return module


def test_bls_model_on_a_fake_triton_gives_the_graphs_masks(
    repo: Path, tiny_export_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = _fake_triton(repo)
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", fake)
    spec = importlib.util.spec_from_file_location(
        "dpnet_bls_model", repo / "dpnet" / "1" / "model.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.TritonPythonModel()
    config = json_format.MessageToJson(
        _config(repo / "dpnet" / "config.pbtxt"), preserving_proto_field_name=True
    )
    model.initialize({"model_config": config})

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (129, 129, 3), dtype=np.uint8)
    mask = np.zeros((129, 129), np.uint8)
    mask[30:90, 40:100] = 1
    images, masks = prepare_support(
        [image, image[::-1]], [mask, mask[::-1]], 129, raw_input=False, max_shots=5
    )
    queries = [
        prepare_query(rng.integers(0, 256, (129, 129, 3), dtype=np.uint8), 129, raw_input=False)
        for _ in range(3)
    ]

    def request(**arrays: np.ndarray) -> dict[str, Any]:
        return {name: fake.Tensor(name, value) for name, value in arrays.items()}  # type: ignore[attr-defined]

    name = np.array([b"cat"], dtype=object)
    register = request(class_name=name, support_images=images[0], support_masks=masks[0])
    segments = [request(class_name=name, query_image=query[0]) for query in queries]
    unknown = request(class_name=np.array([b"dog"], dtype=object), query_image=queries[0][0])
    (registered,) = asyncio.run(model.execute([register]))
    answers = asyncio.run(model.execute([*segments, unknown, request(class_name=name)]))

    assert fake.get_output_tensor_by_name(registered, "shots").as_numpy().tolist() == [2]  # type: ignore[attr-defined]
    with Predictor.open(tiny_export_dir) as predictor:
        cache = predictor.infer_support({"support_images": images, "support_masks": masks})
        for query, answer in zip(queries, answers, strict=False):
            want = predictor.infer_query({"query_image": query, **cache})
            got = {t.name(): t.as_numpy() for t in answer.output_tensors}
            np.testing.assert_array_equal(got["mask"], want["mask"][0])
            np.testing.assert_array_equal(got["logits"], want["logits"][0])
            assert got["pseudo_count"].tolist() == want["pseudo_count"].tolist()
    assert answers[3].has_error() and "no class 'dog' is registered" in answers[3].error().message()
    assert answers[4].has_error() and "to register, or query_image" in answers[4].error().message()


def test_cli_writes_a_checked_repository(
    export_cli: RunCli, tiny_export_dir: Path, tmp_path: Path
) -> None:
    done = export_cli(
        "triton", "--model", str(tiny_export_dir), "--out", str(tmp_path / "r"), "--cpu"
    )
    assert done.returncode == 0, done.stderr
    assert "3 models; checked against Triton's model_config schema" in done.stdout
    bad = export_cli("triton", "--model", str(tiny_export_dir), "--backend", "openvino")
    assert bad.returncode == 2 and bad.stderr.strip().startswith(
        "error: unknown Triton backend 'openvino'"
    )
    plans = export_cli(
        "triton", "--model", str(tiny_export_dir), "--out", str(tmp_path / "r3"),
        "--backend", "trt", "--precision", "fp16", "--max-batch", "4",
    )  # fmt: skip
    assert plans.returncode == 0, plans.stderr
    assert (
        f"dpnet-export trt --model {tiny_export_dir} --graph query --precision fp16 --out "
        f"{tmp_path / 'r3' / 'dpnet_query' / '1' / 'model.plan'} --batch-range 1:1:4"
    ) in plans.stdout
    missing = export_cli("triton", "--model", str(tmp_path / "none"), "--out", str(tmp_path / "r2"))
    assert missing.returncode == 1 and "does not exist" in missing.stderr
