"""The bench table: every subject (torch, torch-fp16, ort, ort-fp16, trt) behind one protocol.

Like ultralytics' ``export_formats()`` table, :data:`SUBJECTS` is the single source of truth for
the names the CLI accepts, the order of the report's rows and what each subject needs. Every
subject is a set of :class:`~dpnet_runtime.backends.base.BaseRunner` objects, one per graph
role (``episode``, ``support``, ``query``): the ONNX Runtime and TensorRT runners of the
runtime, and :class:`TorchRunner` here, which runs the checkpoint in PyTorch through the very
export wrappers the graphs were traced from, so all subjects take the same pre-processed
feeds and return the same contract outputs.

Design choice, ``torch-fp16``: ``model.half()`` on CUDA only. On CPU PyTorch runs half
precision convolutions without vector kernels (orders of magnitude slower than FP32), which
measures nothing a deployment would use; the row then says "torch fp16 needs CUDA".
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import logging
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Final

import numpy as np
import torch
from torch import nn

from dpnet.checkpoint import load_model
from dpnet.model.dpnet import DPNet
from dpnet_export.torch_to_onnx import ExportOptions, export_onnx
from dpnet_export.wrappers import EpisodeGraph, QueryGraph, SupportGraph
from dpnet_runtime.artifacts import EPISODE, QUERY, SUPPORT, resolve_artifacts
from dpnet_runtime.backends.base import BaseRunner, RunnerMetadata, TensorSpec, open_runner
from dpnet_runtime.contract import (
    CACHE_NAMES,
    CONFIDENCE,
    DPNET_ONNX,
    EPISODE_INPUTS,
    LOGITS,
    MASK,
    META_BETA,
    META_INPUT_SIZE,
    OUTPUT_NAMES,
    PROTOTYPES,
    PSEUDO_COUNT,
    QUERY_IMAGE,
    SUPPORT_COS_FEATS,
    SUPPORT_FG,
    SUPPORT_IMAGES,
    SUPPORT_MASKS,
    feature_size,
)
from dpnet_runtime.errors import (
    BackendUnavailableError,
    ExportError,
    IncompatibleModelError,
    InputError,
)

__all__ = [
    "SUBJECTS",
    "Subject",
    "SubjectInfo",
    "TorchRunner",
    "artifacts_dir",
    "open_subject",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SubjectInfo:
    """One row of the bench table.

    Attributes:
        name: the subject string of the CLI and JSON (``ort-fp16``).
        backend: ``torch``, ``ort`` or ``trt``.
        precision: ``fp32`` or ``fp16``.
        device: ``cpu`` or ``cuda``.
    """

    name: str
    backend: str
    precision: str
    device: str


SUBJECTS: Final[dict[str, SubjectInfo]] = {
    info.name: info
    for info in (
        SubjectInfo("torch", "torch", "fp32", "cpu"),
        SubjectInfo("torch-fp16", "torch", "fp16", "cuda"),
        SubjectInfo("ort", "ort", "fp32", "cpu"),
        SubjectInfo("ort-fp16", "ort", "fp16", "cpu"),
        SubjectInfo("trt", "trt", "fp16", "cuda"),
    )
}

_WRAPPERS: Final[dict[str, type[nn.Module]]] = {
    EPISODE: EpisodeGraph,
    SUPPORT: SupportGraph,
    QUERY: QueryGraph,
}
_ROLE_INPUTS: Final = {
    EPISODE: EPISODE_INPUTS,
    SUPPORT: (SUPPORT_IMAGES, SUPPORT_MASKS),
    QUERY: (QUERY_IMAGE, *CACHE_NAMES),
}
_ROLE_OUTPUTS: Final = {EPISODE: OUTPUT_NAMES, SUPPORT: CACHE_NAMES, QUERY: OUTPUT_NAMES}


def _tensor_specs(size: int, channels: int) -> dict[str, TensorSpec]:
    side = feature_size(size)
    shapes: dict[str, tuple[tuple[int | str, ...], str]] = {
        SUPPORT_IMAGES: (("B", "K", 3, size, size), "float32"),
        SUPPORT_MASKS: (("B", "K", size, size), "float32"),
        QUERY_IMAGE: (("B", 3, size, size), "float32"),
        SUPPORT_COS_FEATS: (("B", "K", 1024, side, side), "float32"),
        SUPPORT_FG: (("B", "K", side, side), "float32"),
        PROTOTYPES: (("B", "K", channels), "float32"),
        LOGITS: (("B", 2, size, size), "float32"),
        MASK: (("B", size, size), "uint8"),
        PSEUDO_COUNT: (("B",), "int32"),
        CONFIDENCE: (("B", "K", side, side), "uint8"),
    }
    return {name: TensorSpec(name, dtype, shape) for name, (shape, dtype) in shapes.items()}


class TorchRunner(BaseRunner):
    """Runs one graph role of a checkpoint in PyTorch eager mode, behind the runner protocol.

    Floating inputs are cast to the model's dtype and floating outputs back to float32, so
    the feeds and results have the contract's dtypes whatever the precision.

    Args:
        path: the ``dpnet-checkpoint`` file.
        graph: ``episode``, ``support`` or ``query``.
        device: ``cpu`` or ``cuda``.
        precision: ``fp32`` or ``fp16`` (``fp16`` needs CUDA).
        model: an already loaded network to share between the roles (``None``: load ``path``).
    """

    backend: ClassVar[str] = "torch"
    # Only running out of GPU memory is the user's to fix; any other RuntimeError of torch on a
    # checked feed is a bug and must surface as one (STYLE.md 5.4), not as a user error.
    backend_errors: ClassVar[tuple[type[Exception], ...]] = (torch.cuda.OutOfMemoryError,)

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        graph: str,
        device: str = "cpu",
        precision: str = "fp32",
        model: DPNet | None = None,
    ) -> None:
        super().__init__(path)
        if graph not in _WRAPPERS:
            raise InputError(f"graph must be one of {sorted(_WRAPPERS)}, got {graph!r}")
        if precision not in ("fp32", "fp16"):
            raise InputError(f"precision must be fp32 or fp16, got {precision!r}")
        self.graph = graph
        self.device = torch.device(device)
        self.dtype = torch.float16 if precision == "fp16" else torch.float32
        self._model = model
        self._module: nn.Module | None = None

    def _activate(self) -> None:
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailableError(
                "torch on cuda needs a CUDA GPU and a CUDA build of PyTorch (none here)"
            )
        if self.dtype == torch.float16 and self.device.type != "cuda":
            raise BackendUnavailableError("torch fp16 needs CUDA (CPU half kernels are emulated)")
        model = self._model if self._model is not None else load_model(self.path)[0]
        model = model.to(device=self.device, dtype=self.dtype).eval()
        self._module = _WRAPPERS[self.graph](model, model.config.beta_test, False).eval()

    def _metadata(self) -> RunnerMetadata:
        config = self._live_module().model.config
        specs = _tensor_specs(config.input_size, config.feature_channels)
        return RunnerMetadata(
            inputs={name: specs[name] for name in _ROLE_INPUTS[self.graph]},
            outputs={name: specs[name] for name in _ROLE_OUTPUTS[self.graph]},
            properties={
                META_INPUT_SIZE: str(config.input_size),
                META_BETA: str(config.beta_test),
            },
        )

    def _infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        module = self._live_module()
        arguments = [self._tensor(feed[name]) for name in _ROLE_INPUTS[self.graph]]
        with torch.inference_mode():
            outputs = module(*arguments)
        # .cpu() waits for the GPU, so the runner's timing covers the whole computation.
        return {
            name: _to_numpy(value)
            for name, value in zip(_ROLE_OUTPUTS[self.graph], outputs, strict=True)
        }

    def _deactivate(self) -> None:
        self._module = None

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(array).to(self.device)
        return tensor.to(self.dtype) if tensor.is_floating_point() else tensor

    def _live_module(self) -> Any:
        if self._module is None:
            raise RuntimeError(f"TorchRunner({self.path}) is not active: call activate()")
        return self._module


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    value = tensor.float() if tensor.is_floating_point() else tensor
    return np.ascontiguousarray(value.cpu().numpy())


class Subject:
    """One bench row's active runners: the episode graph and, when present, the split pair.

    Args:
        info: the table row.
        runners: graph role -> active runner (the subject owns them; ``close`` releases them).
        files: the artifact files the runners loaded (for the size column).
    """

    def __init__(
        self, info: SubjectInfo, runners: Mapping[str, BaseRunner], files: tuple[Path, ...]
    ) -> None:
        self.info = info
        self.runners = dict(runners)
        self.files = files

    @property
    def has_split(self) -> bool:
        """True when the support encoder and query head can run separately."""
        return SUPPORT in self.runners and QUERY in self.runners

    @property
    def artifact_bytes(self) -> int:
        """Total size of the loaded artifact files."""
        return sum(file.stat().st_size for file in self.files)

    def run_episode(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One whole episode: ``support_images``, ``support_masks``, ``query_image`` -> outputs."""
        if EPISODE not in self.runners:
            cache = self.encode_support(feed)
            return self.segment(feed[QUERY_IMAGE], cache)
        return self.runners[EPISODE].infer(feed)

    def encode_support(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The support cache of ``support_images`` / ``support_masks`` (split path)."""
        support = {name: feed[name] for name in (SUPPORT_IMAGES, SUPPORT_MASKS)}
        return self.runners[SUPPORT].infer(support)

    def segment(
        self, query_image: np.ndarray, cache: Mapping[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        """The query head on a cached support set (split path)."""
        return self.runners[QUERY].infer({QUERY_IMAGE: query_image, **cache})

    def close(self) -> None:
        """Release every runner."""
        for runner in self.runners.values():
            runner.deactivate()


def open_subject(
    name: str, checkpoint: Path, artifacts: Path, *, threads: int, input_size: int
) -> Subject:
    """Open the runners of subject ``name``.

    Args:
        name: a key of :data:`SUBJECTS`.
        checkpoint: the PyTorch checkpoint (torch subjects).
        artifacts: the export directory (``ort`` graphs, ``trt`` engine).
        threads: CPU threads for PyTorch (``torch.set_num_threads``) and ONNX Runtime
            (intra-op; inter-op is 1 since DPNet's graph is one chain).
        input_size: the model side S every feed has; a graph for another size is refused.

    Raises:
        InputError: unknown subject.
        BackendUnavailableError: a package or device the subject needs is absent.
        ModelFileError: an artifact is missing or damaged (message says how to make it).
        IncompatibleModelError: a graph made for another input size.
    """
    info = SUBJECTS.get(name)
    if info is None:
        raise InputError(f"unknown backend {name!r}; choose from {', '.join(SUBJECTS)}")
    if info.backend == "torch":
        torch.set_num_threads(threads)
        return _open_torch(info, checkpoint)
    if info.backend == "trt" and importlib.util.find_spec("tensorrt") is None:
        raise BackendUnavailableError("TensorRT is not installed (pip install 'dpnet[trt]')")
    kind = "engine" if info.backend == "trt" else "onnx"
    files = resolve_artifacts(artifacts, artifact=kind, precision=info.precision).files
    options: dict[str, Any] = (
        {"intra_op_threads": threads, "inter_op_threads": 1} if info.backend == "ort" else {}
    )
    runners: dict[str, BaseRunner] = {}
    try:
        for role, file in files.items():
            runners[role] = open_runner(info.backend, file, **options)
            _check_size(runners[role], input_size)
    except BaseException:
        for runner in runners.values():
            runner.deactivate()
        raise
    return Subject(info, runners, tuple(files.values()))


def _open_torch(info: SubjectInfo, checkpoint: Path) -> Subject:
    model = load_model(checkpoint)[0]
    runners: dict[str, BaseRunner] = {}
    for role in _WRAPPERS:
        runner = TorchRunner(
            checkpoint, graph=role, device=info.device, precision=info.precision, model=model
        )
        runner.activate()
        runners[role] = runner
    return Subject(info, runners, (checkpoint,))


def _check_size(runner: BaseRunner, input_size: int) -> None:
    size = runner.get_properties().get(META_INPUT_SIZE)
    if size is not None and int(size) != input_size:
        raise IncompatibleModelError(
            f"{runner.path} was exported for {size}x{size} inputs but the checkpoint's size is "
            f"{input_size}; export the graphs from this checkpoint"
        )


@contextlib.contextmanager
def artifacts_dir(
    checkpoint: Path, artifacts: Path | None, names: Sequence[str], shots: int
) -> Iterator[tuple[Path, str]]:
    """The export directory the subjects ``names`` load from, exporting it when needed.

    Args:
        checkpoint: the checkpoint to export from.
        artifacts: the user's folder: used as is when it holds ``dpnet.onnx`` (or no subject
            needs graphs), exported into when it does not; ``None``: a temporary folder,
            removed on exit.
        names: the subjects that will run (FP16 copies are exported only for ``ort-fp16``).
        shots: the episodes' K (the graphs accept at least that many shots).

    Yields:
        The folder, and why the FP16 copies are missing ("" when they are not).

    Raises:
        ExportError: the FP32 export failed.
    """
    needs_graphs = any(SUBJECTS[name].backend != "torch" for name in names)
    if artifacts is not None and (not needs_graphs or (artifacts / DPNET_ONNX).is_file()):
        yield artifacts, ""
        return
    with contextlib.ExitStack() as stack:
        folder = artifacts
        if folder is None:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dpnet-bench-")))
        folder.mkdir(parents=True, exist_ok=True)
        fp16 = "ort-fp16" in names
        yield folder, _export(checkpoint, folder, fp16, shots) if needs_graphs else ""


def _export(checkpoint: Path, folder: Path, fp16: bool, shots: int) -> str:
    options = ExportOptions(fp16=fp16, max_shots=max(shots, ExportOptions().max_shots))
    try:
        export_onnx(checkpoint, folder, options)
    except ExportError as exc:
        if not fp16:
            raise
        # The FP32 graphs are still worth measuring: export them alone, note why FP16 is absent.
        logger.warning("FP16 export failed (%s); exporting FP32 only", exc)
        export_onnx(checkpoint, folder, dataclasses.replace(options, fp16=False))
        return f"the FP16 export failed: {exc}"
    return ""
