"""The one runner interface every backend implements, its input check, and the backend registry.

A runner owns one graph or engine. Its public methods (``activate``, ``infer``, metadata,
context manager) live here only: they check state and inputs, time the call and turn the
backend library's exceptions into dpnet errors. A backend subclass implements the four hooks
``_activate``, ``_infer``, ``_deactivate`` and ``_metadata`` and nothing else
(docs/design.md#runner-interface).

Backends are imported on first use through :func:`open_runner`, so ``dpnet_runtime`` imports
without TensorRT or CUDA; a missing package becomes :class:`BackendUnavailableError` naming
the extra to install.
"""

from __future__ import annotations

import abc
import contextlib
import importlib
import inspect
import os
import time
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any, ClassVar, Final, NamedTuple, Self

import numpy as np

from dpnet_runtime.contract import TensorSpec, find_format
from dpnet_runtime.errors import (
    BackendUnavailableError,
    DpnetError,
    InputError,
    ModelFileError,
    OptionError,
    one_line,
)
from dpnet_runtime.extras import PACKAGE_EXTRAS, install_command

__all__ = [
    "BaseRunner",
    "RunnerMetadata",
    "check_feed",
    "import_optional",
    "open_runner",
    "runner_class",
    "thread_options",
]


class RunnerMetadata(NamedTuple):
    """What a backend reports once active: I/O specs and the artifact's key/value properties.

    ``properties`` are the ONNX ``metadata_props`` (or an engine sidecar's fields as strings),
    keyed by the ``META_*`` names of :mod:`dpnet_runtime.contract`.
    """

    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]
    properties: dict[str, str]


def check_feed(feed: Mapping[str, np.ndarray], specs: Mapping[str, TensorSpec]) -> None:
    """Check a feed against input specs: names, dtypes, ranks, static dims, dynamic bounds.

    Dynamic axes with the same name (``B`` in every input) must have the same size.

    Raises:
        InputError: naming the tensor, what it got and what the graph expects.
    """
    missing = sorted(set(specs) - set(feed))
    unknown = sorted(set(feed) - set(specs))
    if missing or unknown:
        raise InputError(
            f"feed names do not match the graph: missing {missing}, unknown {unknown}; "
            f"the graph takes {sorted(specs)}"
        )
    symbols: dict[str, tuple[int, str]] = {}
    for name, spec in specs.items():
        array = feed[name]
        if not isinstance(array, np.ndarray):
            raise InputError(f"input {name!r} must be a numpy array, got {type(array).__name__}")
        got = f"{array.dtype} {list(array.shape)}"
        if array.dtype != np.dtype(spec.dtype):
            raise InputError(f"input {name!r}: got {got}, expected {spec.describe()} (wrong dtype)")
        if array.ndim != len(spec.shape):
            raise InputError(f"input {name!r}: got {got}, expected {spec.describe()} (wrong rank)")
        for axis, (size, dim) in enumerate(zip(array.shape, spec.shape, strict=True)):
            if isinstance(dim, int) and size != dim:
                raise InputError(
                    f"input {name!r}: got {got}, expected {spec.describe()} "
                    f"(axis {axis} must be {dim})"
                )
            if isinstance(dim, str) and dim:
                seen = symbols.setdefault(dim, (size, name))
                if seen[0] != size:
                    raise InputError(
                        f"input {name!r}: axis {dim} is {size} "
                        f"but {seen[1]!r} has {dim} = {seen[0]}"
                    )
        _check_bounds(array.shape, spec, got)


def _check_bounds(shape: tuple[int, ...], spec: TensorSpec, got: str) -> None:
    low = spec.min_shape or (0,) * len(shape)
    high = spec.max_shape or (None,) * len(shape)
    for axis, (size, lo, hi) in enumerate(zip(shape, low, high, strict=True)):
        if size < lo or (hi is not None and size > hi):
            raise InputError(
                f"input {spec.name!r}: got {got}, axis {axis} must be in [{lo}, {hi}] "
                "(the range the engine was built for; rebuild it with a wider profile)"
            )


class BaseRunner(abc.ABC):
    """Runs one graph or engine; public behaviour here, backend hooks in subclasses.

    Use as a context manager, or call :meth:`activate` / :meth:`deactivate`: the session,
    context, stream and buffers are created once in ``activate`` and reused by every call.

    Attributes:
        backend: backend name (``"ort"``, ``"trt"``), as in the CLI and JSON reports.
        backend_errors: the backend library's exception types; raised by a hook they become
            :class:`ModelFileError` (activate) or :class:`DpnetError` (infer), ``from exc``.
        thread_safe: whether :meth:`infer` may be called from several threads at once.
        threads_option: the constructor keyword that sets the CPU threads per operator
            (``None``: the backend computes on a GPU and has none).
        requires: the optional packages ``activate`` imports (keys of
            :data:`~dpnet_runtime.extras.PACKAGE_EXTRAS`), for checks before any file is read.
        path: the artifact file.
        last_inference_ns: wall time of the last :meth:`infer` backend call, in nanoseconds.
    """

    backend: ClassVar[str] = ""
    backend_errors: ClassVar[tuple[type[Exception], ...]] = ()
    thread_safe: ClassVar[bool] = False
    threads_option: ClassVar[str | None] = None
    requires: ClassVar[tuple[str, ...]] = ()

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.last_inference_ns: int | None = None
        self._meta: RunnerMetadata | None = None

    @property
    def is_active(self) -> bool:
        """True between :meth:`activate` and :meth:`deactivate`."""
        return self._meta is not None

    def activate(self) -> None:
        """Load the artifact and allocate what every call reuses; a no-op when already active.

        Raises:
            ModelFileError: the file is missing, truncated or not loadable by this backend.
            BackendUnavailableError: a needed provider, library or device is absent.
        """
        if self.is_active:
            return
        if not self.path.is_file():
            raise ModelFileError(f"{self.path}: no such file")
        try:
            self._activate()
            self._meta = self._metadata()
        except self.backend_errors as exc:
            self._safe_deactivate()
            raise ModelFileError(
                f"{self.path}: cannot be loaded by the {self.backend} backend "
                f"({one_line(exc, limit=300)}); re-export or rebuild it"
            ) from exc
        except BaseException:
            self._safe_deactivate()
            raise

    def deactivate(self) -> None:
        """Release the session, buffers and streams; a no-op when not active."""
        if not self.is_active:
            return
        self._meta = None
        self._deactivate()

    def __enter__(self) -> Self:
        self.activate()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.deactivate()

    def get_input_metadata(self) -> dict[str, TensorSpec]:
        """Input specs by name, in graph order."""
        return dict(self._active_meta().inputs)

    def get_output_metadata(self) -> dict[str, TensorSpec]:
        """Output specs by name, in graph order."""
        return dict(self._active_meta().outputs)

    def get_properties(self) -> dict[str, str]:
        """The artifact's metadata (ONNX ``metadata_props`` or engine sidecar), as strings."""
        return dict(self._active_meta().properties)

    def infer(
        self, feed: Mapping[str, np.ndarray], *, check_inputs: bool = True
    ) -> dict[str, np.ndarray]:
        """Run the graph once.

        Args:
            feed: one array per graph input, by name.
            check_inputs: check names, dtypes and shapes first (:func:`check_feed`); turn it
                off only for feeds already known to be valid (it costs microseconds).

        Returns:
            One array per graph output, by name; the caller owns them.

        Raises:
            InputError: the feed does not match the graph.
            DpnetError: the backend failed to run it (message names the backend and file).
        """
        meta = self._active_meta()
        if check_inputs:
            check_feed(feed, meta.inputs)
        start = time.perf_counter_ns()
        try:
            outputs = self._infer(feed)
        except self.backend_errors as exc:
            raise DpnetError(
                f"{self.path}: {self.backend} inference failed ({one_line(exc, limit=300)}); "
                "check the inputs against get_input_metadata()"
            ) from exc
        self.last_inference_ns = time.perf_counter_ns() - start
        return outputs

    def _active_meta(self) -> RunnerMetadata:
        if self._meta is None:
            raise RuntimeError(f"{type(self).__name__}({self.path}) is not active: call activate()")
        return self._meta

    def _safe_deactivate(self) -> None:
        # A half-built session must not leak, but its own cleanup error must not mask the cause.
        with contextlib.suppress(Exception):
            self._deactivate()

    @abc.abstractmethod
    def _activate(self) -> None:
        """Create the session/context/buffers for ``self.path``."""

    @abc.abstractmethod
    def _metadata(self) -> RunnerMetadata:
        """Report I/O specs and properties; called once, right after ``_activate``."""

    @abc.abstractmethod
    def _infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once on a checked feed; return arrays the caller owns (no internal buffers)."""

    @abc.abstractmethod
    def _deactivate(self) -> None:
        """Release everything ``_activate`` created; must tolerate a half-finished activate."""


# Runner classes by backend, imported on first use; what each needs is in contract.FORMATS.
_RUNNERS: Final = {
    "ort": ("dpnet_runtime.backends.ort", "OrtRunner"),
    "trt": ("dpnet_runtime.backends.trt", "TrtRunner"),
}


def runner_class(name: str) -> type[BaseRunner]:
    """The runner class of backend ``name``, imported on first use.

    Raises:
        OptionError: unknown backend.
        BackendUnavailableError: the backend's packages are not installed (names the extra).
    """
    if name not in _RUNNERS:
        raise OptionError(f"unknown backend {name!r}; choose one of {', '.join(_RUNNERS)}")
    module_name, class_name = _RUNNERS[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        install = install_command(find_format(name).extra)
        raise BackendUnavailableError(
            f"backend {name!r} needs the package {exc.name or 'that is missing'} ({install})"
        ) from exc
    found: type[BaseRunner] = getattr(module, class_name)
    return found


def thread_options(name: str, threads: int | None) -> dict[str, int]:
    """The runner keyword that gives backend ``name`` ``threads`` CPU threads per operator.

    Args:
        name: a runtime backend (``ort``, ``trt``).
        threads: the thread count; ``None`` gives no keyword (the backend's default).

    Raises:
        InputError: ``threads`` is set but the backend has no CPU threads to set (TensorRT
            computes on the GPU); the message names the backends that do.

    >>> thread_options("ort", 2), thread_options("trt", None)
    ({'intra_op_threads': 2}, {})
    """
    if threads is None:
        return {}
    option = runner_class(name).threads_option
    if option is None:
        with_threads = [b for b in _RUNNERS if runner_class(b).threads_option is not None]
        raise InputError(
            f"the {name} backend computes on the GPU and has no CPU threads to set: drop "
            f"--threads (it sets the threads of the {', '.join(with_threads)} backend)"
        )
    return {option: threads}


def open_runner(name: str, path: str | os.PathLike[str], **options: Any) -> BaseRunner:
    """Import backend ``name`` on first use, build its runner for ``path`` and activate it.

    Args:
        name: ``"ort"`` or ``"trt"``, a runtime backend of ``contract.FORMATS``.
        path: the artifact file.
        **options: the runner's constructor keywords (``providers``, ``intra_op_threads``...).

    Returns:
        An active runner; close it with ``deactivate()`` or use it as a context manager.

    Raises:
        InputError: unknown backend or option.
        BackendUnavailableError: the backend's packages are not installed (names the extra).
        ModelFileError: the artifact cannot be loaded.

    >>> runner = open_runner("ort", "out/dpnet.onnx", intra_op_threads=2)  # doctest: +SKIP
    """
    cls = runner_class(name)
    try:
        inspect.signature(cls).bind(path, **options)
    except TypeError as exc:
        raise OptionError(f"backend {name!r}: {exc}") from exc
    runner: BaseRunner = cls(path, **options)
    runner.activate()
    return runner


def import_optional(module: str, *, package: str) -> ModuleType:
    """Import an optional package's module on first use, telling "absent" from "broken".

    Args:
        module: the import path (``tensorrt``, ``cuda.bindings.runtime``); its top-level name
            is a key of :data:`~dpnet_runtime.extras.PACKAGE_EXTRAS`, the extra that installs it.
        package: the pip package that provides it, for the message.

    Raises:
        BackendUnavailableError: the package is not installed (names the extra), or it is
            installed but cannot load, e.g. a shared library is missing: then the message is
            the loader's own (``libnvinfer.so.10: cannot open shared object file``), since
            reinstalling dpnet would not help.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        parts = module.split(".")
        if exc.name not in {".".join(parts[: i + 1]) for i in range(len(parts))}:
            raise _broken(package, exc) from exc
        extra = PACKAGE_EXTRAS[parts[0]]
        raise BackendUnavailableError(
            f"{package} is not installed; on a machine with an NVIDIA GPU run: "
            f"{install_command(extra)}"
        ) from exc
    except (ImportError, OSError) as exc:
        raise _broken(package, exc) from exc


def _broken(package: str, exc: BaseException) -> BackendUnavailableError:
    return BackendUnavailableError(
        f"{package} is installed but cannot be loaded: {one_line(exc, limit=300)} (check the "
        "NVIDIA driver and that the CUDA/TensorRT libraries are on the library path)"
    )
