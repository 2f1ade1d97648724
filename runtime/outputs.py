"""Where a command may write, and in which format: one rule for every dpnet CLI.

:mod:`dpnet_runtime.fileio` says *how* a file is written (atomically, what may stand at the
destination); this module says *whether* a destination is acceptable, before any work starts:

1. **Inputs are never written.** An output that is one of the command's inputs (a file such
   as a ground-truth mask or a checkpoint, or a folder such as ``--labels`` or an export), or
   lies anywhere inside a dataset root (read recursively: a run folder there would become a
   class), is refused with one line (:func:`refuse_inputs`); so is an output folder that
   holds input files (:func:`refuse_folder_holding`: ``NAME_mask.png`` beside ``NAME.jpg`` is
   where ground truth lives). No option lifts this: a prediction written over its ground
   truth, then scored against itself, is never what a user wants. A new file or folder beside
   the inputs is fine.
2. **Files the command did not write are removed only on request.** A folder output holding
   files that the new output would replace or make stale (the FP16 copies of an earlier export
   when only FP32 is exported again) is refused unless the user passes ``--overwrite``
   (:func:`refuse_replacing`).
3. **A folder option makes its folder** (:func:`make_folder`), and a path names a folder when it
   ends with a separator (``masks/``), is a folder already, or does not exist and has no
   extension (:func:`names_folder`).
4. **A file's format follows its extension, or the path is refused** (:func:`output_format`):
   ``--out m.jpg`` never receives PNG bytes. A name without an extension (``/dev/stdout``, a
   FIFO) gets the option's default format.

Refusals of option values are :class:`~dpnet_runtime.errors.OptionError` (a usage error,
exit 2); outputs that collide with inputs are :class:`~dpnet_runtime.errors.InputError` (exit 1).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Final

from dpnet_runtime.errors import InputError, OptionError

__all__ = [
    "CSV_FORMATS",
    "ENGINE_FORMATS",
    "JSON_FORMATS",
    "MARKDOWN_FORMATS",
    "MASK_FORMATS",
    "PICTURE_FORMATS",
    "PLOT_FORMATS",
    "YAML_FORMATS",
    "check_file_output",
    "check_report_outputs",
    "make_folder",
    "names_folder",
    "output_format",
    "refuse_folder_holding",
    "refuse_inputs",
    "refuse_replacing",
]

PathLike = str | os.PathLike[str]

MASK_FORMATS: Final = {".png": "PNG", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF"}
"""Lossless image formats by extension (PIL format names): masks keep their exact 0 / 255."""
PICTURE_FORMATS: Final = {**MASK_FORMATS, ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
"""Formats for pictures a person looks at (overlays, contact sheets)."""
PLOT_FORMATS: Final = {".png": "png", ".svg": "svg", ".pdf": "pdf"}
"""matplotlib formats of plots."""
ENGINE_FORMATS: Final = {".engine": "engine", ".plan": "plan"}
"""Serialized TensorRT engines (Triton names them model.plan)."""
JSON_FORMATS: Final = {".json": "json"}
CSV_FORMATS: Final = {".csv": "csv"}
MARKDOWN_FORMATS: Final = {".md": "markdown"}
YAML_FORMATS: Final = {".yaml": "yaml", ".yml": "yaml"}
"""Config files (``dpnet-serve config --out serve.yaml``)."""


def output_format(path: PathLike, option: str, formats: Mapping[str, str], default: str) -> str:
    """The format of output ``path``, from its extension (any case).

    Args:
        path: the destination.
        option: the option that named it, for the message (``--out``).
        formats: extension -> format name, the formats the option writes.
        default: the format of a name without an extension (``/dev/stdout``, a FIFO).

    Raises:
        OptionError: an extension the option does not write.

    >>> output_format("sheet.JPG", "--sheet", PICTURE_FORMATS, "PNG")
    'JPEG'
    >>> output_format("/dev/stdout", "--out", MASK_FORMATS, "PNG")
    'PNG'
    >>> output_format("m.jpg", "--out", MASK_FORMATS, "PNG")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    dpnet_runtime.errors.OptionError: --out m.jpg: ...; name it .png, .bmp, .tif or .tiff
    """
    suffix = Path(path).suffix.lower()
    if not suffix:
        return default
    if suffix in formats:
        return formats[suffix]
    names = list(formats)
    choices = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
    raise OptionError(
        f"{option} {os.fspath(path)}: dpnet does not write {suffix} files here; name it {choices}"
    )


def check_file_output(
    option: str,
    path: PathLike | None,
    formats: Mapping[str, str],
    inputs: Mapping[str, Iterable[PathLike | None]],
    *,
    trees: Mapping[str, Iterable[PathLike | None]] | None = None,
) -> None:
    """Rules 1 and 4 for one file that a command writes (``--json``, ``--csv``, ``--plot``):
    its extension must fit ``formats`` and it must not be, or lie inside, an input.

    Args:
        option: the option that names it.
        path: the file, or ``None`` (not asked for: nothing to check).
        formats: extension -> format (:data:`JSON_FORMATS`...).
        inputs: option -> the paths the command reads.
        trees: option -> the folders it reads recursively (see :func:`refuse_inputs`).

    Raises:
        OptionError: the extension does not fit.
        InputError: the file is, or lies inside, an input.
    """
    if path is None:
        return
    output_format(path, option, formats, next(iter(formats.values())))
    refuse_inputs({option: [path]}, inputs, trees=trees)


def check_report_outputs(
    json_path: PathLike | None,
    markdown: PathLike | None,
    inputs: Mapping[str, Iterable[PathLike | None]],
) -> None:
    """:func:`check_file_output` for the ``--json`` and ``--markdown`` reports of a benchmark.

    Raises:
        OptionError: an extension does not fit.
        InputError: a report is, or lies inside, an input.
    """
    check_file_output("--json", json_path, JSON_FORMATS, inputs)
    check_file_output("--markdown", markdown, MARKDOWN_FORMATS, inputs)


def names_folder(path: PathLike) -> bool:
    """Whether an option that takes a file or a folder (``dpnet-segment --out``) names a folder.

    A folder: the path ends with a separator, is a folder, or does not exist and has no
    extension. Anything else (``mask.png``, ``/dev/stdout``, an existing file) is a file.

    >>> names_folder("masks/"), names_folder("mask.png")
    (True, False)
    """
    text = os.fspath(path)
    target = Path(text)
    if text.endswith((os.sep, "/")) or target.is_dir():
        return True
    return not target.exists() and not target.is_symlink() and not target.suffix


def make_folder(path: PathLike, option: str) -> Path:
    """Create output folder ``path`` (and its parents) if missing; return it.

    Raises:
        InputError: a file stands at ``path`` or above it, or the folder cannot be created.
    """
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{option} {folder} is a file; give a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(
            f"cannot create {option} folder {folder}: {exc.strerror}; choose another {option}"
        ) from exc
    return folder


def refuse_inputs(
    outputs: Mapping[str, Iterable[PathLike | None]],
    inputs: Mapping[str, Iterable[PathLike | None]],
    *,
    trees: Mapping[str, Iterable[PathLike | None]] | None = None,
) -> None:
    """Refuse any output that is an input, or lies inside an input tree (module docstring, 1).

    Paths are compared after resolving links, so ``./truth`` and ``truth/`` are one folder.

    Args:
        outputs: option (``--out``) -> the paths it writes (files or folders; ``None`` skipped).
        inputs: option (``--labels``) -> the files and folders it reads: an output may not be
            one of them (a new file beside them, or a folder below them, is fine).
        trees: option (``--data-root``) -> folders read recursively (a dataset): an output may
            not lie anywhere inside them.

    Raises:
        InputError: naming both options and paths, and the fix.

    >>> refuse_inputs({"--out": ["mine/run"]}, {}, trees={"--data-root": ["mine"]})
    ... # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    dpnet_runtime.errors.InputError: --out mine/run lies inside --data-root mine: ...
    """
    sources = [
        (option, Path(path), Path(path).resolve(), tree)
        for tree, mapping in ((False, inputs), (True, trees or {}))
        for option, paths in mapping.items()
        for path in paths
        if path is not None
    ]
    for option, paths in outputs.items():
        for path in paths:
            if path is None:
                continue
            resolved = Path(path).resolve()
            for source_option, source, source_resolved, tree in sources:
                inside = tree and source_resolved in resolved.parents
                if resolved == source_resolved or inside:
                    where = "lies inside" if inside else "is"
                    raise InputError(
                        f"{option} {os.fspath(path)} {where} {source_option} {source}: dpnet "
                        f"never writes over or into its inputs; choose another {option}"
                    )


def refuse_folder_holding(
    folder: PathLike, option: str, files: Mapping[str, Iterable[PathLike]]
) -> None:
    """Refuse output folder ``folder`` when it is the folder of an input file (module docstring,
    1); a folder below it is fine.

    Args:
        folder: the output folder.
        option: the option that named it.
        files: option -> the input files it named.

    Raises:
        InputError: naming the folder, the input file and the fix.
    """
    resolved = Path(folder).resolve()
    for source_option, paths in files.items():
        for path in paths:
            if Path(path).resolve().parent == resolved:
                raise InputError(
                    f"{option} {os.fspath(folder)} holds {source_option} {path}: dpnet does "
                    f"not write among your inputs; choose another {option} (a new folder)"
                )


def refuse_replacing(
    files: Iterable[PathLike], option: str, why: str, *, action: str, overwrite: bool
) -> None:
    """Refuse to replace or remove existing ``files`` unless ``overwrite`` (module docstring, 2).

    Args:
        files: what the output would replace or remove; missing ones are ignored.
        option: the output option (``--out``).
        why: why they must go, completing "... holds FILES, which ..." (``"would no longer
            match the new graphs"``).
        action: what ``--overwrite`` does to them (``"remove them"``).
        overwrite: the user passed ``--overwrite``.

    Raises:
        InputError: listing the files (the first five) and the two ways on.

    >>> refuse_replacing(["setup.py"], "--out", "x", action="remove them", overwrite=True)
    """
    present = sorted(Path(file) for file in files if Path(file).exists())
    if overwrite or not present:
        return
    folder = present[0].parent
    names = ", ".join(file.name for file in present[:5]) + (", ..." if len(present) > 5 else "")
    raise InputError(
        f"{option} {folder} holds {names}, which {why}; pass --overwrite to {action}, "
        f"or choose another {option}"
    )
