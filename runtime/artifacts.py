"""Resolve an export directory or file into the graphs it holds, and read their metadata.

An export directory (``dpnet-export onnx --out DIR``) holds the whole-episode graph
``dpnet.onnx`` and the split pair ``dpnet_support.onnx`` / ``dpnet_query.onnx``, each with
copies of other precisions (``dpnet_fp16.onnx``...) and TensorRT engines, one file per row
of ``contract.FORMATS``. :func:`resolve_artifacts` picks the files of one format (or, without
a precision, the most faithful one present) and :func:`opened_format` checks them against the
precision they record;
:func:`read_graph_info` checks an opened graph against the contract and parses its metadata
(values are strings: numbers as decimal text, booleans ``true``/``false``, lists as JSON).
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from dpnet_runtime.contract import (
    EPISODE,
    GRAPHS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    META_BETA,
    META_CHECKPOINT_SHA256,
    META_GRAPH,
    META_INPUT_SIZE,
    META_MAX_SHOTS,
    META_MEAN,
    META_STD,
    QUERY,
    SHOTS_AXIS,
    SUPPORT,
    Format,
    TensorSpec,
    find_format,
)
from dpnet_runtime.errors import IncompatibleModelError, ModelFileError, OptionError
from dpnet_runtime.formats import formats_of

__all__ = ["ArtifactSet", "GraphInfo", "opened_format", "read_graph_info", "resolve_artifacts"]

_EXPORT_HINT: Final = "dpnet-export onnx --ckpt CHECKPOINT --out DIR"
# A training run's checkpoints (dpnet-train --out) and the suffixes torch users give them.
_RUN_CHECKPOINTS: Final = ("best.pt", "last.pt")
_CHECKPOINT_SUFFIXES: Final = (".pt", ".pth", ".ckpt")


@dataclass(frozen=True)
class ArtifactSet:
    """The files of one format found in an export directory.

    Attributes:
        files: graph role (``episode``, ``support``, ``query``) -> file; holds the episode
            graph, the support/query pair, or both.
        format: the row these files are named for; ``None`` for a single file whose name is
            no row's (its own ``precision`` metadata then says which row it is).
    """

    files: dict[str, Path]
    format: Format | None


@dataclass(frozen=True)
class GraphInfo:
    """What the runtime needs to know about one opened graph.

    Attributes:
        graph: ``episode``, ``support`` or ``query``.
        input_size: the model side S the graph was exported for (images are S x S).
        dynamic_size: the graph accepts other sides (needed for multi-scale inference).
        raw_input: images are ``uint8 [.., S, S, 3]`` and normalisation is in the graph.
        max_shots: the most shots the graph accepts, ``None`` if unbounded.
        mean: RGB mean on 0..1 pixels.
        std: RGB std on 0..1 pixels.
        export_id: checkpoint sha256 and beta of the export that wrote the graph (empty when
            the metadata lacks them); graphs of one predictor must share it.
    """

    graph: str
    input_size: int
    dynamic_size: bool
    raw_input: bool
    max_shots: int | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    export_id: str = ""


def resolve_artifacts(
    path: str | os.PathLike[str], backend: str, precision: str | None = None
) -> ArtifactSet:
    """Find the files of ``backend`` at ``precision`` in an export directory, or the set a
    file belongs to.

    Args:
        path: an export directory, or one graph or engine file (a support or query graph brings
            its partner from the same folder).
        backend: a runtime backend of :data:`~dpnet_runtime.contract.FORMATS` (``ort``, ``trt``).
        precision: the row's precision; ``None`` takes, in a directory, the backend's first row
            (the most faithful) whose files are present and, for a file, the row its name is.

    Raises:
        OptionError: unknown backend or precision (the message lists the choices).
        ModelFileError: the path is missing, holds no file of the format, or a pair is
            incomplete; the message says how to make the files.
    """
    try:
        rows = [find_format(backend, precision)] if precision else list(formats_of(backend))
        rows = rows or [find_format(backend)]  # an unknown backend: the error lists the choices
    except ValueError as exc:
        raise OptionError(str(exc)) from exc
    location = Path(path)
    if location.is_file():
        return _resolve_file(location, rows, named=precision is None)
    if not location.exists():
        raise ModelFileError(f"model path {location} does not exist; create it with {_EXPORT_HINT}")
    for fmt in rows:
        files = _files_present(location, fmt)
        if files:
            return ArtifactSet(files, fmt)
    run = [name for name in _RUN_CHECKPOINTS if (location / name).is_file()]
    if run:
        what = f"{location} is a training run, not an export; {run[0]} is a checkpoint"
        raise ModelFileError(_checkpoint_message(location / run[0], what))
    looked = ", ".join(fmt.file_name(role) for fmt in rows for role in fmt.roles)
    what = f"{rows[0].name} model" if precision else f"{backend} model of any precision"
    raise ModelFileError(
        f"{location} holds no {what} (looked for {looked}); create it with {rows[0].make}"
    )


def _files_present(location: Path, fmt: Format) -> dict[str, Path]:
    files = {role: location / fmt.file_name(role) for role in fmt.roles}
    files = {role: file for role, file in files.items() if file.is_file()}
    if (SUPPORT in files) != (QUERY in files):
        files = {role: file for role, file in files.items() if role == EPISODE}
    return files


def _checkpoint_message(checkpoint: Path, what: str) -> str:
    return (
        f"{what}: export it with dpnet-export onnx --ckpt {checkpoint} --out DIR, "
        "then pass --model DIR"
    )


def _resolve_file(file: Path, rows: list[Format], *, named: bool) -> ArtifactSet:
    # torch.save writes a zip archive; no graph or engine is one.
    if file.suffix.lower() in _CHECKPOINT_SUFFIXES or zipfile.is_zipfile(file):
        raise ModelFileError(_checkpoint_message(file, f"{file} is a checkpoint"))
    expected = f".{rows[0].artifact}"
    if file.suffix in (".onnx", ".engine") and file.suffix != expected:
        raise ModelFileError(
            f"{file} is not a {rows[0].artifact} file (expected a {expected} file)"
        )
    by_name = {fmt.file_name(role): fmt for fmt in rows for role in fmt.roles}
    fmt = by_name.get(file.name) if named else rows[0]
    names = {} if fmt is None else {role: fmt.file_name(role) for role in fmt.roles}
    if file.name in (names.get(SUPPORT), names.get(QUERY)):
        pair = {role: file.parent / names[role] for role in (SUPPORT, QUERY)}
        for role, partner in pair.items():
            if not partner.is_file():
                raise ModelFileError(
                    f"{file} needs its {role} partner {partner}; export both with {_EXPORT_HINT}"
                )
        return ArtifactSet(pair, fmt)
    return ArtifactSet({EPISODE: file}, fmt)


def opened_format(artifacts: ArtifactSet, backend: str, declared: str, *, asked: bool) -> Format:
    """The row the opened files are, after checking the precision they record.

    Args:
        artifacts: what :func:`resolve_artifacts` found.
        backend: the backend they were opened on.
        declared: the precision the files record (ONNX metadata or engine sidecar).
        asked: the caller named the precision (else it was chosen from the files' names).

    Raises:
        IncompatibleModelError: the files hold another precision than the one asked for, or
            than their names say; one line naming both.
    """
    fmt = artifacts.format
    file = next(iter(artifacts.files.values()))
    if fmt is None:
        try:
            return find_format(backend, declared)
        except ValueError as exc:
            raise IncompatibleModelError(f"{file} records precision {declared!r}: {exc}") from exc
    if declared == fmt.precision:
        return fmt
    if asked:
        raise IncompatibleModelError(
            f"{file} holds {declared}, not the {fmt.precision} asked for ({fmt.name}); open it "
            f"with precision {declared!r}, or make the {fmt.precision} one with {fmt.make}"
        )
    raise IncompatibleModelError(
        f"{file} holds {declared} but its name is the {fmt.name} format's ({fmt.precision}); "
        f"rename it as the {declared} format names it, or rebuild it with {fmt.make}"
    )


def read_graph_info(
    graph: str,
    path: Path,
    inputs: Mapping[str, TensorSpec],
    outputs: Mapping[str, TensorSpec],
    properties: Mapping[str, str],
) -> GraphInfo:
    """Check an opened graph against the contract for its role and parse its metadata.

    Args:
        graph: the role it was opened for (``episode``, ``support``, ``query``).
        path: its file, for messages.
        inputs: its input specs.
        outputs: its output specs.
        properties: its metadata (``META_*`` keys).

    Raises:
        IncompatibleModelError: wrong role or I/O names, size metadata contradicting shapes.
        ModelFileError: malformed or missing metadata.
    """
    declared = properties.get(META_GRAPH)
    if declared is not None and declared != graph:
        raise IncompatibleModelError(
            f"{path} is a {declared!r} graph but was opened as the {graph!r} graph "
            "(keep the file names dpnet-export wrote)"
        )
    spec = GRAPHS[graph]
    missing_in = [name for name in spec.input_names if name not in inputs]
    missing_out = [name for name in spec.output_names if name not in outputs]
    if missing_in or missing_out:
        raise IncompatibleModelError(
            f"{path} is not a dpnet {graph} graph: missing inputs {missing_in}, outputs "
            f"{missing_out} (has {list(inputs)} -> {list(outputs)}); re-export with {_EXPORT_HINT}"
        )
    # The first input is an image (support_images or query_image): it tells layout and size.
    image = inputs[spec.input_names[0]]
    raw_input = image.dtype == "uint8"
    spatial = image.shape[-3:-1] if raw_input else image.shape[-2:]
    static_sides = {dim for dim in spatial if isinstance(dim, int)}
    input_size = _int_property(properties, META_INPUT_SIZE, path)
    if input_size is None:
        if len(static_sides) != 1:
            raise ModelFileError(
                f"{path} has no {META_INPUT_SIZE!r} metadata and dynamic image sides; "
                f"re-export with {_EXPORT_HINT}"
            )
        input_size = static_sides.pop()
    elif static_sides - {input_size}:
        raise IncompatibleModelError(
            f"{path}: metadata {META_INPUT_SIZE}={input_size} contradicts the input shape "
            f"{image.describe()}; re-export with {_EXPORT_HINT}"
        )
    return GraphInfo(
        graph=graph,
        input_size=input_size,
        dynamic_size=not static_sides,
        raw_input=raw_input,
        max_shots=_max_shots(graph, inputs, properties, path),
        mean=_floats_property(properties, META_MEAN, path) or IMAGENET_MEAN,
        std=_floats_property(properties, META_STD, path) or IMAGENET_STD,
        export_id=" ".join(
            properties.get(key, "") for key in (META_CHECKPOINT_SHA256, META_BETA)
        ).strip(),
    )


def _max_shots(
    graph: str, inputs: Mapping[str, TensorSpec], properties: Mapping[str, str], path: Path
) -> int | None:
    declared = _int_property(properties, META_MAX_SHOTS, path)
    if declared is not None:
        return declared
    name, axis = next(
        (spec.name, spec.shape.index(SHOTS_AXIS))
        for spec in GRAPHS[graph].inputs
        if SHOTS_AXIS in spec.shape
    )
    spec = inputs[name]
    if spec.max_shape is not None:
        return spec.max_shape[axis]
    dim = spec.shape[axis] if len(spec.shape) > axis else None
    return dim if isinstance(dim, int) else None


def _int_property(properties: Mapping[str, str], key: str, path: Path) -> int | None:
    text = properties.get(key)
    if text is None:
        return None
    try:
        value = int(json.loads(text))
    except (ValueError, TypeError) as exc:
        raise ModelFileError(
            f"{path}: metadata {key}={text!r} is not an integer; re-export with {_EXPORT_HINT}"
        ) from exc
    if value < 1:
        raise ModelFileError(
            f"{path}: metadata {key}={value} must be >= 1; re-export with {_EXPORT_HINT}"
        )
    return value


def _floats_property(
    properties: Mapping[str, str], key: str, path: Path
) -> tuple[float, ...] | None:
    text = properties.get(key)
    if text is None:
        return None
    try:
        values = tuple(float(value) for value in json.loads(text))
    except (ValueError, TypeError) as exc:
        raise ModelFileError(
            f"{path}: metadata {key}={text!r} is not a JSON list of numbers; "
            f"re-export with {_EXPORT_HINT}"
        ) from exc
    if len(values) != 3:
        raise ModelFileError(f"{path}: metadata {key} must hold 3 RGB values, got {len(values)}")
    return values
