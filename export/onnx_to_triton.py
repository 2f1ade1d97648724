"""An export directory -> a Triton Inference Server model repository.

:func:`onnx_to_triton` writes::

    REPO/dpnet_support/config.pbtxt   the support graph: dynamic batching, dynamic K
    REPO/dpnet_support/1/model.onnx   (ONNX Runtime backend; a TensorRT plan you build instead)
    REPO/dpnet_query/config.pbtxt     the query graph on a support cache
    REPO/dpnet_query/1/model.onnx
    REPO/dpnet/config.pbtxt           a Python-backend BLS model: register a class, segment
    REPO/dpnet/1/model.py             queries with its cached support tensors (triton_bls.py)

Tensor names, data types and dims come from the contract (:data:`~dpnet_runtime.contract.
GRAPHS`, bound to the export's size, channels and input layout read from its metadata); Triton
treats the first axis as the batch axis (B), the shots axis K is ``-1``. Every
``config.pbtxt`` is checked against Triton's own schema (``model_config_pb2`` of
``tritonclient``, :func:`validate_repository`) when that package is installed.

Loading the repository needs NVIDIA's Triton server (its container image) with the ONNX
Runtime or TensorRT backend and the Python backend; none of them is on PyPI.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from dpnet_export import triton_bls
from dpnet_export.onnx_to_engine import onnx_input_shapes, onnx_metadata
from dpnet_runtime.contract import (
    GRAPHS,
    META_CONFIG,
    META_INPUT_SIZE,
    META_RAW_INPUT,
    QUERY,
    QUERY_IMAGE,
    SOURCE_PRECISION,
    SUPPORT,
    Format,
    TensorSpec,
    find_format,
)
from dpnet_runtime.errors import (
    BackendUnavailableError,
    ExportError,
    ModelFileError,
    OptionError,
)
from dpnet_runtime.extras import missing_package_message
from dpnet_runtime.fileio import atomic_write_text
from dpnet_runtime.formats import precisions, runtime_backends
from dpnet_runtime.outputs import refuse_inputs

__all__ = [
    "BLS_MODEL",
    "TRITON_PLATFORMS",
    "TritonOptions",
    "TritonRepository",
    "onnx_to_triton",
    "source_graphs",
    "validate_repository",
]

BLS_MODEL: Final = "dpnet"
TRITON_PLATFORMS: Final = {"onnx": "onnxruntime_onnx", "engine": "tensorrt_plan"}
"""Artifact kind of a ``contract.FORMATS`` row -> the Triton platform that serves it."""
_MODEL_FILES: Final = {"onnx": "model.onnx", "engine": "model.plan"}
_DATA_TYPES: Final = {
    "float32": "TYPE_FP32",
    "float16": "TYPE_FP16",
    "uint8": "TYPE_UINT8",
    "int32": "TYPE_INT32",
    "int64": "TYPE_INT64",
}
_CLASS_NAME: Final = "class_name"
_SHOTS: Final = "shots"


class _Enum(str):
    """A protobuf enum value: written bare (``TYPE_FP32``), not quoted."""


Config = dict[str, object]


@dataclass(frozen=True)
class TritonOptions:
    """How to write the repository.

    Args:
        backend: a runtime backend of ``contract.FORMATS``: ``ort`` (Triton's ONNX Runtime
            backend serves the graphs) or ``trt`` (TensorRT plans, built on the serving GPU).
        precision: the row of that backend: ``ort`` serves its graphs (``*_fp16.onnx``,
            ``*_int8.onnx``), ``trt`` builds its plans from its source graphs (the FP32 ones,
            the mixed-precision ``*_fp16.onnx`` built strongly typed, the symmetric
            ``*_int8_trt.onnx`` QDQ ones).
        max_batch: Triton's ``max_batch_size`` of the two graphs.
        queue_delay_us: dynamic batching's ``max_queue_delay_microseconds``.
        instances: model instances of each graph.
        kind: ``KIND_GPU`` or ``KIND_CPU``.
    """

    backend: str = "ort"
    precision: str = SOURCE_PRECISION
    max_batch: int = 8
    queue_delay_us: int = 5000
    instances: int = 1
    kind: str = "KIND_GPU"

    def __post_init__(self) -> None:
        if self.backend not in runtime_backends():
            raise OptionError(
                f"unknown Triton backend {self.backend!r}; choose {' or '.join(runtime_backends())}"
            )
        if self.kind not in ("KIND_GPU", "KIND_CPU"):
            raise OptionError(f"kind must be KIND_GPU or KIND_CPU, got {self.kind!r}")
        if min(self.max_batch, self.instances) < 1 or self.queue_delay_us < 0:
            raise OptionError("--max-batch and --instances must be >= 1, --queue-delay-us >= 0")
        if self.precision not in precisions(self.backend):
            choices = ", ".join(precisions(self.backend))
            raise OptionError(
                f"precision must be one of {choices} on {self.backend}, got {self.precision!r}"
            )

    @property
    def format(self) -> Format:
        """The row of ``contract.FORMATS`` the repository serves."""
        return find_format(self.backend, self.precision)


def source_graphs(artifacts: Path, options: TritonOptions) -> dict[str, Path]:
    """The ONNX file each graph model serves (``onnxruntime``) or is built from (``tensorrt``).

    Returns:
        ``{"support": path, "query": path}`` inside ``artifacts``.
    """
    return {role: artifacts / options.format.onnx_name(role) for role in (SUPPORT, QUERY)}


@dataclass(frozen=True)
class TritonRepository:
    """What :func:`onnx_to_triton` wrote.

    Attributes:
        repo: the repository folder.
        configs: every ``config.pbtxt`` written.
        validated: the configs were parsed with Triton's schema (``tritonclient`` installed).
        to_build: for the TensorRT backend, the plan each graph model still needs:
            (graph role, ONNX file, plan path); build them on the serving GPU.
    """

    repo: Path
    configs: tuple[Path, ...]
    validated: bool
    to_build: tuple[tuple[str, Path, Path], ...]


def onnx_to_triton(
    artifacts: Path, repo: Path, options: TritonOptions | None = None
) -> TritonRepository:
    """Write the Triton model repository of an export directory.

    Args:
        artifacts: ``dpnet-export onnx --out`` directory (with the support/query pair).
        repo: the repository folder; created if missing, the three models replaced.
        options: see :class:`TritonOptions`.

    Raises:
        InputError: ``repo`` is, or lies inside, ``artifacts``.
        ModelFileError: a graph is missing or its metadata or I/O is not the contract's.
        ExportError: a written config fails Triton's schema.
    """
    options = options or TritonOptions()
    refuse_inputs({"--out": [repo]}, {"--model": [artifacts]})
    files = source_graphs(artifacts, options)
    specs = {role: _bound_specs(role, file) for role, file in files.items()}
    configs = {
        **{
            GRAPHS[role].stem: _graph_config(GRAPHS[role].stem, *specs[role], options)
            for role in (SUPPORT, QUERY)
        },
        BLS_MODEL: _bls_config(specs[SUPPORT][0], specs[QUERY], options),
    }
    written = []
    for name, config in configs.items():
        (repo / name / "1").mkdir(parents=True, exist_ok=True)
        path = repo / name / "config.pbtxt"
        atomic_write_text(path, to_pbtxt(config))
        written.append(path)
    atomic_write_text(repo / BLS_MODEL / "1" / "model.py", Path(triton_bls.__file__).read_text())
    to_build = []
    artifact = options.format.artifact
    for role, source in files.items():
        target = repo / GRAPHS[role].stem / "1" / _MODEL_FILES[artifact]
        if artifact == "onnx":
            shutil.copyfile(source, target)
        else:
            to_build.append((role, source, target))
    validated = validate_repository(repo, required=False)
    return TritonRepository(repo, tuple(written), validated, tuple(to_build))


def validate_repository(repo: Path, *, required: bool = True) -> bool:
    """Parse every ``REPO/*/config.pbtxt`` into Triton's ``ModelConfig`` message.

    Args:
        repo: a model repository.
        required: raise when ``tritonclient`` is missing; otherwise return ``False``.

    Returns:
        ``True`` when every config parsed; ``False`` when ``tritonclient`` is missing.

    Raises:
        ExportError: a config has an unknown field or a malformed value (file and line named).
        BackendUnavailableError: ``tritonclient`` is missing and ``required``.
    """
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError as exc:
        if required:
            raise BackendUnavailableError(
                missing_package_message("tritonclient", "checking Triton configs")
            ) from exc
        return False
    for path in sorted(repo.glob("*/config.pbtxt")):
        try:
            text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
        except text_format.ParseError as exc:
            raise ExportError(f"{path} is not a valid Triton model config: {exc}") from exc
    return True


def to_pbtxt(config: Config, indent: int = 0) -> str:
    """Protocol-buffer text of nested dicts: dicts are messages, lists of dicts repeated
    messages, lists of scalars repeated scalars; strings are quoted, :class:`_Enum` bare.

    >>> print(to_pbtxt({"name": "m", "dims": [-1, 3], "kind": _Enum("KIND_GPU")}), end="")
    name: "m"
    dims: [ -1, 3 ]
    kind: KIND_GPU
    """
    pad = "  " * indent
    lines = []
    for key, value in config.items():
        if isinstance(value, dict):
            lines += [f"{pad}{key} {{", to_pbtxt(value, indent + 1).rstrip("\n"), f"{pad}}}"]
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            for item in value:
                lines += [f"{pad}{key} {{", to_pbtxt(item, indent + 1).rstrip("\n"), f"{pad}}}"]
        elif isinstance(value, list):
            items = ", ".join(_scalar(item) for item in value)
            lines.append(f"{pad}{key}: [ {items} ]" if items else f"{pad}{key}: []")
        else:
            lines.append(f"{pad}{key}: {_scalar(value)}")
    return "\n".join(lines) + "\n"


def _scalar(value: object) -> str:
    if isinstance(value, _Enum):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return str(value)


def _bound_specs(role: str, path: Path) -> tuple[dict[str, TensorSpec], dict[str, TensorSpec]]:
    metadata = onnx_metadata(path)
    try:
        size = int(metadata[META_INPUT_SIZE])
        channels = int(json.loads(metadata[META_CONFIG])["feature_channels"])
        raw_input = json.loads(metadata[META_RAW_INPUT]) is True
    except (KeyError, ValueError, TypeError) as exc:
        raise ModelFileError(
            f"{path} lacks the dpnet metadata ({exc}); export it again with dpnet-export onnx"
        ) from exc
    inputs, outputs = GRAPHS[role].bind(size=size, channels=channels, raw_input=raw_input)
    if set(onnx_input_shapes(path)) != set(inputs):
        raise ModelFileError(
            f"{path} has inputs {sorted(onnx_input_shapes(path))}, not the contract's "
            f"{sorted(inputs)}; export it again with this dpnet's dpnet-export onnx"
        )
    return inputs, outputs


def _tensor(spec: TensorSpec, *, batched: bool) -> Config:
    # Triton's dims leave out the batch axis of a batched model; symbolic axes (K) are -1; a
    # per-episode scalar ([B]) is dims [1] reshaped to [] in a batched model.
    shape = spec.shape[1:]
    tensor: Config = {
        "name": spec.name,
        "data_type": _Enum(_DATA_TYPES[spec.dtype]),
        "dims": [dim if isinstance(dim, int) else -1 for dim in shape] or [1],
    }
    if batched and not shape:
        tensor["reshape"] = {"shape": []}
    return tensor


def _graph_config(
    name: str,
    inputs: dict[str, TensorSpec],
    outputs: dict[str, TensorSpec],
    options: TritonOptions,
) -> Config:
    return {
        "name": name,
        "platform": TRITON_PLATFORMS[options.format.artifact],
        "max_batch_size": options.max_batch,
        "input": [_tensor(spec, batched=True) for spec in inputs.values()],
        "output": [_tensor(spec, batched=True) for spec in outputs.values()],
        "dynamic_batching": {"max_queue_delay_microseconds": options.queue_delay_us},
        "instance_group": [{"count": options.instances, "kind": _Enum(options.kind)}],
    }


def _bls_config(
    support_inputs: dict[str, TensorSpec],
    query: tuple[dict[str, TensorSpec], dict[str, TensorSpec]],
    options: TritonOptions,
) -> Config:
    # One request registers (class_name + support tensors without B) or segments (class_name +
    # query_image without B); the names the model calls come in as parameters, from the contract.
    query_inputs, query_outputs = query
    optional = [
        {**_tensor(spec, batched=False), "optional": True}
        for spec in (*support_inputs.values(), query_inputs[QUERY_IMAGE])
    ]
    cache = [name for name in query_inputs if name != QUERY_IMAGE]
    parameters = {
        triton_bls.SUPPORT_MODEL: GRAPHS[SUPPORT].stem,
        triton_bls.QUERY_MODEL: GRAPHS[QUERY].stem,
        triton_bls.SUPPORT_INPUTS: ",".join(support_inputs),
        triton_bls.CACHE_NAMES: ",".join(cache),
        triton_bls.QUERY_INPUT: QUERY_IMAGE,
        triton_bls.QUERY_OUTPUTS: ",".join(query_outputs),
    }
    return {
        "name": BLS_MODEL,
        "backend": "python",
        "max_batch_size": 0,
        "input": [
            {"name": _CLASS_NAME, "data_type": _Enum("TYPE_STRING"), "dims": [1]},
            *optional,
        ],
        "output": [
            {"name": _SHOTS, "data_type": _Enum("TYPE_INT32"), "dims": [1]},
            *(_tensor(spec, batched=False) for spec in query_outputs.values()),
        ],
        "instance_group": [{"count": 1, "kind": _Enum("KIND_CPU")}],
        "parameters": [
            {"key": key, "value": {"string_value": value}} for key, value in parameters.items()
        ],
    }
