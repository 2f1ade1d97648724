"""Bench subjects: one :class:`~dpnet_runtime.predictor.Predictor` per row of ``contract.FORMATS``.

``contract.FORMATS`` (like Ultralytics' ``export_formats()``) is the single source of truth for
the names the CLI accepts, the order of the report's rows and what each row needs. Every
subject is a Predictor over one runner per graph role (``episode``, ``support``, ``query``):
the ONNX Runtime and TensorRT runners of the runtime, or :class:`TorchRunner` here, which runs
the checkpoint in PyTorch through the very export wrappers the graphs were traced from, so all
subjects take the same pre-processed feeds and return the same contract outputs.

Design choice, ``torch-fp16``: ``model.half()`` on CUDA only. On CPU PyTorch runs half
precision convolutions without vector kernels (orders of magnitude slower than FP32), which
measures nothing a deployment would use; the row then says "torch fp16 needs CUDA".
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from dpnet.checkpoint import load_model
from dpnet.model.dpnet import DPNet
from dpnet_export.calibration import CalibrationOptions
from dpnet_export.torch_to_onnx import ExportOptions, export_onnx
from dpnet_export.wrappers import GRAPH_MODULES
from dpnet_runtime.backends.base import BaseRunner, RunnerMetadata, runner_class, thread_options
from dpnet_runtime.contract import (
    EPISODE,
    FORMATS,
    GRAPHS,
    META_BETA,
    META_INPUT_SIZE,
    META_PRECISION,
    SOURCE_PRECISION,
    Format,
    find_format,
)
from dpnet_runtime.errors import (
    BackendUnavailableError,
    ExportError,
    IncompatibleModelError,
    InputError,
    OptionError,
)
from dpnet_runtime.extras import missing_package_message
from dpnet_runtime.predictor import Predictor

__all__ = ["Subject", "TorchRunner", "artifacts_dir", "open_subject"]

logger = logging.getLogger(__name__)

# The precisions PyTorch runs the checkpoint in (the torch rows of contract.FORMATS).
_TORCH_DTYPES = {SOURCE_PRECISION: torch.float32, "fp16": torch.float16}


class TorchRunner(BaseRunner):
    """Runs one graph role of a checkpoint in PyTorch eager mode, behind the runner protocol.

    Floating inputs are cast to the model's dtype and floating outputs back to float32, so
    the feeds and results have the contract's dtypes whatever the precision.

    Args:
        path: the ``dpnet-checkpoint`` file.
        graph: ``episode``, ``support`` or ``query``.
        device: ``cpu`` or ``cuda``.
        precision: a ``torch`` row's precision of ``contract.FORMATS`` (``fp16`` needs CUDA).
        model: an already loaded network to share between the roles (``None``: load ``path``).
    """

    backend: ClassVar[str] = "torch"
    # Only running out of GPU memory is the user's to fix; any other RuntimeError of torch on a
    # checked feed is a bug and must surface as one (docs/design.md#errors), not as a user error.
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
        if graph not in GRAPH_MODULES:
            raise InputError(f"graph must be one of {sorted(GRAPH_MODULES)}, got {graph!r}")
        if precision not in _TORCH_DTYPES:
            raise InputError(
                f"precision must be one of {', '.join(_TORCH_DTYPES)}, got {precision!r}"
            )
        self.graph = graph
        self.precision = precision
        self.device = torch.device(device)
        self.dtype = _TORCH_DTYPES[precision]
        self._model = model
        self._module: nn.Module | None = None

    def _activate(self) -> None:
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailableError(
                "torch on cuda needs a CUDA GPU and a CUDA build of PyTorch (none here)"
            )
        if self.dtype == torch.float16 and self.device.type != "cuda":
            raise BackendUnavailableError(
                f"torch {self.precision} needs CUDA (CPU half kernels are emulated)"
            )
        model = self._model if self._model is not None else load_model(self.path)[0]
        model = model.to(device=self.device, dtype=self.dtype).eval()
        self._module = GRAPH_MODULES[self.graph](model, model.config.beta_test, False).eval()

    def _metadata(self) -> RunnerMetadata:
        config = self._live_module().model.config
        inputs, outputs = GRAPHS[self.graph].bind(
            size=config.input_size, channels=config.feature_channels
        )
        return RunnerMetadata(
            inputs=inputs,
            outputs=outputs,
            properties={
                META_INPUT_SIZE: str(config.input_size),
                META_BETA: str(config.beta_test),
                META_PRECISION: self.precision,
            },
        )

    def _infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        module = self._live_module()
        spec = GRAPHS[self.graph]
        arguments = [self._tensor(feed[name]) for name in spec.input_names]
        with torch.inference_mode():
            outputs = module(*arguments)
        # .cpu() waits for the GPU, so the runner's timing covers the whole computation.
        return {
            name: _to_numpy(value) for name, value in zip(spec.output_names, outputs, strict=True)
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


@dataclass
class Subject:
    """One bench row: a format's :class:`Predictor`.

    The bench feeds pre-processed episodes through the predictor's raw-feed API
    (``infer_episode``, ``infer_support``, ``infer_query``), so every row runs exactly what
    the runtime runs.

    Attributes:
        format: the row of ``contract.FORMATS``.
        predictor: owns the active runners (``close`` releases them).
    """

    format: Format
    predictor: Predictor

    @property
    def artifact_bytes(self) -> int:
        """Total size of the loaded artifact files (the checkpoint for PyTorch)."""
        return sum(file.stat().st_size for file in set(self.predictor.files))

    def close(self) -> None:
        """Release every runner."""
        self.predictor.close()


def open_subject(
    name: str, checkpoint: Path, artifacts: Path, *, threads: int, input_size: int
) -> Subject:
    """Open format ``name`` as a :class:`Predictor`.

    Args:
        name: a key of ``contract.FORMATS``.
        checkpoint: the PyTorch checkpoint (torch formats).
        artifacts: the export directory (ONNX graphs, TensorRT engine).
        threads: CPU threads for PyTorch (``torch.set_num_threads``) and ONNX Runtime
            (intra-op; inter-op is 1 since DPNet's graph is one chain).
        input_size: the model side S every feed has; a graph for another size is refused.

    Raises:
        OptionError: unknown format.
        BackendUnavailableError: a package or device the format needs is absent.
        ModelFileError: an artifact is missing or damaged (message says how to make it).
        IncompatibleModelError: a graph made for another input size.
    """
    fmt = FORMATS.get(name)
    if fmt is None:
        raise OptionError(f"unknown backend {name!r}; choose from {', '.join(FORMATS)}")
    if fmt.artifact == "checkpoint":  # PyTorch runs the checkpoint itself
        torch.set_num_threads(threads)
        predictor = Predictor(_torch_runners(fmt, checkpoint))
    else:
        runner = runner_class(fmt.backend)
        _check_packages(fmt, runner.requires)
        options: dict[str, Any] = {}
        if runner.threads_option is not None:
            # inter-op 1: DPNet's graph is one chain, a second pool only adds scheduling.
            options = {**thread_options(fmt.backend, threads), "inter_op_threads": 1}
        predictor = Predictor.open(artifacts, fmt.backend, precision=fmt.precision, **options)
    if predictor.info.input_size != input_size:
        predictor.close()
        size = predictor.info.input_size
        raise IncompatibleModelError(
            f"{artifacts} holds graphs exported for {size}x{size} inputs but the checkpoint's "
            f"size is {input_size}; export the graphs from this checkpoint"
        )
    return Subject(fmt, predictor)


def _check_packages(fmt: Format, packages: tuple[str, ...]) -> None:
    # Before looking for its files: a row whose packages are absent cannot run here at all.
    for package in packages:
        if importlib.util.find_spec(package) is None:
            raise BackendUnavailableError(missing_package_message(package, f"the {fmt.name} row"))


def _torch_runners(fmt: Format, checkpoint: Path) -> dict[str, BaseRunner]:
    model = load_model(checkpoint)[0]
    runners: dict[str, BaseRunner] = {}
    for role in GRAPHS:
        runner = TorchRunner(
            checkpoint, graph=role, device=fmt.device, precision=fmt.precision, model=model
        )
        runner.activate()
        runners[role] = runner
    return runners


@contextlib.contextmanager
def artifacts_dir(
    checkpoint: Path,
    artifacts: Path | None,
    names: Sequence[str],
    shots: int,
    calibration: CalibrationOptions,
) -> Iterator[tuple[Path, dict[str, str]]]:
    """The export directory the subjects ``names`` load from, exporting it when needed.

    Args:
        checkpoint: the checkpoint to export from.
        artifacts: the user's folder: used as is when it holds ``dpnet.onnx`` (or no subject
            needs graphs), exported into when it does not; ``None``: a temporary folder,
            removed on exit.
        names: the formats that will run (FP16 and INT8 copies are exported only for the ONNX
            formats of those precisions among them).
        shots: the episodes' K (the graphs accept at least that many shots).
        calibration: where the INT8 copies calibrate.

    Yields:
        The folder, and format name -> why its graphs are missing (the low-precision export
        failed; empty when nothing failed).

    Raises:
        ExportError: the FP32 export failed.
        DatasetError: the INT8 calibration data cannot be read.
    """
    needs_graphs = any(FORMATS[name].artifact != "checkpoint" for name in names)
    episode_graph = find_format("ort", SOURCE_PRECISION).file_name(EPISODE)
    if artifacts is not None and (not needs_graphs or (artifacts / episode_graph).is_file()):
        yield artifacts, {}
        return
    with contextlib.ExitStack() as stack:
        folder = artifacts
        if folder is None:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dpnet-bench-")))
        folder.mkdir(parents=True, exist_ok=True)
        failures = _export(checkpoint, folder, names, shots, calibration) if needs_graphs else {}
        yield folder, failures


def _export(
    checkpoint: Path,
    folder: Path,
    names: Sequence[str],
    shots: int,
    calibration: CalibrationOptions,
) -> dict[str, str]:
    copies = [
        name for name in names if FORMATS[name].artifact == "onnx" and FORMATS[name].converter
    ]
    precisions = tuple(dict.fromkeys(FORMATS[name].precision for name in copies))
    calibrated = any(FORMATS[name].calibrated for name in copies)
    options = ExportOptions(
        precisions=precisions,
        calibration=calibration if calibrated else CalibrationOptions(),
        max_shots=max(shots, ExportOptions().max_shots),
    )
    try:
        export_onnx(checkpoint, folder, options)
    except ExportError as exc:
        if not copies:
            raise
        # The FP32 graphs are still worth measuring: export them alone, note why the rest lack.
        logger.warning("low-precision export failed (%s); exporting FP32 only", exc)
        export_onnx(checkpoint, folder, ExportOptions(max_shots=options.max_shots))
        return {name: f"the {FORMATS[name].precision} export failed: {exc}" for name in copies}
    return {}
