"""The one CLI error boundary, plus the rich console and progress bars every CLI shares.

Library code never prints or exits; a console script calls :func:`run_app`, which turns a
:class:`~dpnet_runtime.errors.DpnetError` into one line on stderr and exit code 1, and any
other exception (a bug) into "internal error" with exit code 70 (``--debug`` or
``DPNET_DEBUG=1`` shows the traceback).

An optional package that is not installed (torch, onnx, tensorrt: ``ModuleNotFoundError``) is
a user error too: one line naming the extra that installs it. The base install
(``pip install dpnet``, no torch) puts every console script on PATH, so the scripts that need
torch name their app as ``"module:attribute"``: :func:`run_app` imports it inside the boundary.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from dpnet_runtime.errors import BackendUnavailableError, DpnetError, one_line
from dpnet_runtime.extras import PACKAGE_EXTRAS, missing_package_message

__all__ = [
    "EXIT_CHECK_FAILED",
    "EXIT_INTERNAL",
    "EXIT_USER_ERROR",
    "make_app",
    "make_progress",
    "run_app",
    "stderr_console",
    "stdout_console",
]

EXIT_USER_ERROR: Final = 1
EXIT_CHECK_FAILED: Final = 3
EXIT_INTERNAL: Final = 70

# Soft wrap: a message holds paths a user copies; rich would break them at 80 columns in a pipe.
stdout_console = Console(soft_wrap=True)
stderr_console = Console(stderr=True, soft_wrap=True)


def run_app(app: Callable[..., Any] | str, argv: list[str] | None = None) -> None:
    """Run a typer app (or any callable CLI) inside the dpnet error boundary; never returns.

    Args:
        app: a ``typer.Typer`` (created with ``pretty_exceptions_enable=False``) or callable,
            or ``"module:attribute"`` naming one, imported inside the boundary.
        argv: arguments without the program name; ``None`` reads ``sys.argv``.

    >>> run_app("dpnet.train.cli:app")  # doctest: +SKIP
    """
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args or os.environ.get("DPNET_DEBUG") == "1"
    args = [arg for arg in args if arg != "--debug"]
    try:
        _load(app)(args=args, standalone_mode=True)
    except SystemExit as exc:
        raise SystemExit(exc.code) from None
    except DpnetError as exc:
        _user_error(exc, debug)
    except KeyboardInterrupt:
        stderr_console.print("interrupted")
        raise SystemExit(130) from None
    except Exception as exc:
        missing = _missing_extra(exc)
        if missing is not None and not debug:
            _user_error(missing, debug)
        if debug:
            raise
        stderr_console.print(
            f"[bold red]internal error:[/] {type(exc).__name__}: {_one_line(exc)} "
            "(a bug in dpnet; rerun with --debug for the traceback and report it)",
            highlight=False,
        )
        raise SystemExit(EXIT_INTERNAL) from None
    raise SystemExit(0)


def make_app(name: str | None = None, help: str | None = None, **options: Any) -> typer.Typer:
    """A typer app set up for :func:`run_app`: no pretty tracebacks (the boundary reports
    errors), no shell-completion options; ``options`` go to ``typer.Typer``."""
    return typer.Typer(
        name=name, help=help, pretty_exceptions_enable=False, add_completion=False, **options
    )


def make_progress(*, transient: bool = False) -> Progress:
    """A rich progress bar with description, bar, count, elapsed and remaining time (stderr)."""
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
        console=stderr_console,
        transient=transient,
        disable=not stderr_console.is_terminal and os.environ.get("DPNET_PROGRESS") != "1",
    )


def _load(app: Callable[..., Any] | str) -> Callable[..., Any]:
    if not isinstance(app, str):
        return app
    module, _, attribute = app.partition(":")
    loaded: Callable[..., Any] = getattr(importlib.import_module(module), attribute)
    return loaded


def _missing_extra(exc: Exception) -> BackendUnavailableError | None:
    """The user error for an optional package that is not installed, else ``None`` (a bug)."""
    if not isinstance(exc, ModuleNotFoundError) or exc.name is None:
        return None
    package = exc.name.partition(".")[0]
    if package not in PACKAGE_EXTRAS:
        return None
    return BackendUnavailableError(missing_package_message(package, Path(sys.argv[0]).name))


def _user_error(exc: DpnetError, debug: bool) -> NoReturn:
    if debug:
        raise exc
    stderr_console.print(f"[bold red]error:[/] {_one_line(exc)}", highlight=False)
    raise SystemExit(EXIT_USER_ERROR) from None


def _one_line(exc: BaseException) -> str:
    # Escaped: messages such as "pip install 'dpnet[trt]'" must not be read as rich markup.
    return escape(one_line(exc))
