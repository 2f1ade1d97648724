"""The exception hierarchy shared by every dpnet package.

Everything a user can fix derives from :class:`DpnetError`; the CLIs print such an error
on one line and exit 1, or 2 for an :class:`OptionError` (a usage error: an option value or a
combination of options the command does not take). Broken invariants are bugs and raise
``RuntimeError`` instead.
"""

from __future__ import annotations

__all__ = [
    "BackendUnavailableError",
    "DatasetError",
    "DpnetError",
    "ExportError",
    "IncompatibleModelError",
    "InputError",
    "ModelFileError",
    "OptionError",
    "one_line",
]


class DpnetError(Exception):
    """Base of every error a user can fix: the message says what, where, and the fix."""


class InputError(DpnetError, ValueError):
    """Bad caller data: rank, shape, dtype, empty mask, K mismatch, incompatible options."""


class OptionError(InputError):
    """An option value or a combination of options that is not accepted (unknown backend,
    an unknown ``--precision``, a malformed range): a usage error, exit code 2 in the CLIs.

    Still an :class:`InputError` (and a ``ValueError``) for Python callers.
    """


class ModelFileError(DpnetError):
    """A checkpoint, ONNX file, engine or sidecar is missing, truncated or malformed."""


class IncompatibleModelError(ModelFileError):
    """A valid model file made for another dpnet, TensorRT, GPU or shots range."""


class DatasetError(DpnetError):
    """A dataset root, folder layout, split list or image file problem."""


class BackendUnavailableError(DpnetError):
    """A package, execution provider or GPU is absent; the message names the extra to install."""


class ExportError(DpnetError):
    """A conversion failed (ONNX checker, TensorRT parser or builder); carries the tool's log."""

    def __init__(self, message: str, log: str = "") -> None:
        super().__init__(message)
        self.log = log


def one_line(exc: BaseException, limit: int | None = None) -> str:
    """An exception's message on one line, for a message of our own or the CLI's error line.

    Whitespace runs (newlines included) become one space; an empty message gives the type name.

    Args:
        exc: any exception, often a third-party one whose message spans lines.
        limit: at most this many characters are kept, then ``...``; ``None`` keeps all.

    >>> one_line(ValueError("bad\\n  value"))
    'bad value'
    >>> one_line(KeyError()), one_line(OSError("x" * 9), limit=4)
    ('KeyError', 'xxxx...')
    """
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if limit is None or len(text) <= limit else text[:limit] + "..."
