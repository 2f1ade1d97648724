"""The one CLI error boundary, plus the rich console and progress bars every CLI shares.

Library code never prints or exits; a console script calls :func:`run_app`, which turns a
:class:`~dpnet_runtime.errors.DpnetError` into one line on stderr and exit code 1 (2 for an
:class:`~dpnet_runtime.errors.OptionError`, a usage error, as typer's own), and any other
exception (a bug) into "internal error" with exit code 70 (``--debug`` or ``DPNET_DEBUG=1``
shows the traceback).

:func:`run_app` is also where every command gets the same manners: old option spellings are
rewritten (:mod:`dpnet_runtime.renames`, one deprecation line each), a command that takes
options prints its help when given no arguments (exit 2, as click does for a command group),
and a Python warning (the random-trunk one, say) is one ``warning: ...`` line, without the
source line Python's default display adds (``--debug`` keeps that display).

An optional package that is not installed (torch, onnx, tensorrt: ``ModuleNotFoundError``) is
a user error too: one line naming the extra that installs it. The base install
(``pip install dpnet``, no torch) puts every console script on PATH, so the scripts that need
torch name their app as ``"module:attribute"``: :func:`run_app` imports it inside the boundary.
"""

from __future__ import annotations

import importlib
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Final, NoReturn

import typer
import typer.main
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from dpnet_runtime.errors import BackendUnavailableError, DpnetError, OptionError, one_line
from dpnet_runtime.extras import PACKAGE_EXTRAS, missing_package_message
from dpnet_runtime.renames import commands_with_renames, rewrite_argv

__all__ = [
    "EXIT_CHECK_FAILED",
    "EXIT_INTERNAL",
    "EXIT_USAGE",
    "EXIT_USER_ERROR",
    "make_app",
    "make_progress",
    "run_app",
    "stderr_console",
    "stdout_console",
]

EXIT_USER_ERROR: Final = 1
EXIT_USAGE: Final = 2
EXIT_CHECK_FAILED: Final = 3
EXIT_INTERNAL: Final = 70

# Soft wrap: a message holds paths a user copies; rich would break them at 80 columns in a pipe.
# No markup: text is printed as it is, so "pip install 'dpnet[triton]'" or a file named
# "[1].png" never loses its brackets to rich's markup (styles come from Text and Table styles).
stdout_console = Console(soft_wrap=True, markup=False)
stderr_console = Console(stderr=True, soft_wrap=True, markup=False)


def run_app(
    app: typer.Typer | str, argv: list[str] | None = None, *, program: str | None = None
) -> None:
    """Run a typer app inside the dpnet error boundary; never returns.

    Args:
        app: a ``typer.Typer`` made by :func:`make_app`, or ``"module:attribute"`` naming one,
            imported inside the boundary.
        argv: arguments without the program name; ``None`` reads ``sys.argv``.
        program: the command as typed, for the usage line and the rename table
            (``"dpnet-bench serve"``); default: the app's name, else ``sys.argv[0]``'s.

    >>> run_app("dpnet.train.cli:app")  # doctest: +SKIP
    """
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args or os.environ.get("DPNET_DEBUG") == "1"
    args = [arg for arg in args if arg != "--debug"]
    if not debug:
        warnings.showwarning = _show_warning
    try:
        loaded = _load(app)
        name = program or loaded.info.name or Path(sys.argv[0]).name
        command = typer.main.get_command(loaded)
        _help_when_bare(command)
        command.main(args=_renamed(name, args), prog_name=name, standalone_mode=True)
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
            _styled(
                "internal error:",
                f"{type(exc).__name__}: {one_line(exc)} "
                "(a bug in dpnet; rerun with --debug for the traceback and report it)",
            ),
            highlight=False,
        )
        raise SystemExit(EXIT_INTERNAL) from None
    raise SystemExit(0)


def make_app(name: str | None = None, help: str | None = None, **options: Any) -> typer.Typer:
    """A typer app set up for :func:`run_app`: no pretty tracebacks (the boundary reports
    errors), no shell-completion options, and click's plain help, which wraps the text but
    never cuts an option's name (rich panels did at 80 columns); ``options`` go to
    ``typer.Typer``."""
    return typer.Typer(
        name=name,
        help=help,
        pretty_exceptions_enable=False,
        add_completion=False,
        rich_markup_mode=None,
        **options,
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


def _load(app: typer.Typer | str) -> typer.Typer:
    if not isinstance(app, str):
        return app
    module, _, attribute = app.partition(":")
    loaded: typer.Typer = getattr(importlib.import_module(module), attribute)
    return loaded


def _help_when_bare(command: Any) -> None:
    """A group, and every command that takes options, prints its help when given no arguments
    (``dpnet-info`` takes none: it runs)."""
    subcommands = getattr(command, "commands", None)  # a TyperGroup (typer vendors click)
    command.no_args_is_help = bool(command.params) or subcommands is not None
    for subcommand in (subcommands or {}).values():
        _help_when_bare(subcommand)


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    """``warnings.showwarning`` for the CLIs: one line, no Python source."""
    stderr_console.print(f"warning: {one_line(Exception(message))}", highlight=False)


def _renamed(program: str, args: list[str]) -> list[str]:
    """``args`` with old option spellings replaced (:mod:`dpnet_runtime.renames`)."""
    command, rest, head = program, args, []
    if args and f"{program} {args[0]}" in commands_with_renames():
        command, rest, head = f"{program} {args[0]}", args[1:], args[:1]
    rewritten, notes = rewrite_argv(command, rest)
    for note in notes:
        stderr_console.print(note, highlight=False)
    return head + rewritten


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
    stderr_console.print(_styled("error:", one_line(exc)), highlight=False)
    raise SystemExit(EXIT_USAGE if isinstance(exc, OptionError) else EXIT_USER_ERROR) from None


def _styled(label: str, message: str) -> Text:
    """``label`` in bold red, then the message as plain text (never read as markup)."""
    return Text.assemble((label, "bold red"), " ", message)
