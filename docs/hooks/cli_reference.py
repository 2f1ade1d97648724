"""MkDocs hook: the CLI reference, generated at build time from the typer apps themselves.

Every command line a user runs is a row of :data:`PROGRAMS`: the program as typed, the typer app
behind it (``"module:attribute"``) and its other spellings. For each, the hook renders one page
``reference/cli/<slug>.md`` from ``typer.main.get_command(app)``: the command's help, its usage
line, and every visible option with its help, default and whether it is required (click's own
help records, the text ``--help`` prints; typer vendors its own click, so commands are
duck-typed). Subcommands get a section each. The pages and their
nav entries exist only in the build, so the reference cannot drift from the code.

The build fails (an error, or a warning under ``--strict``) when a console script of
``pyproject.toml`` has no row here, or a row names an app that does not import.
"""

from __future__ import annotations

import html
import importlib
import logging
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files

__all__ = ["PROGRAMS", "Program", "on_config", "on_files", "render_program"]

_LOG = logging.getLogger("mkdocs.hooks.cli_reference")
_ROOT = Path(__file__).resolve().parents[2]
_SECTION = "reference/cli"
_NAV_TITLE = "CLI reference"


@dataclass(frozen=True)
class Program:
    """One command line of the reference.

    Attributes:
        name: as the user types it (``dpnet-export``, ``python -m dpnet_bench.soak``).
        app: the typer app, ``"module:attribute"``.
        summary: one line for the reference's index.
        also: other ways to run the same app (``python -m dpnet_runtime``).
        subcommands: extra ``(name, "module:attribute")`` apps reached as ``name SUBCOMMAND``
            outside typer (``dpnet-bench serve``).
    """

    name: str
    app: str
    summary: str
    also: tuple[str, ...] = ()
    subcommands: tuple[tuple[str, str], ...] = ()

    @property
    def slug(self) -> str:
        """The page's file stem: ``dpnet-export``, ``dpnet_bench.soak``."""
        return self.name.removeprefix("python -m ").replace(" ", "-")

    @property
    def page(self) -> str:
        """The page's path under the docs folder."""
        return f"{_SECTION}/{self.slug}.md"


PROGRAMS: tuple[Program, ...] = (
    Program("dpnet-segment", "dpnet_runtime.cli:app",
            "segment images with an export (support pairs in, masks out)",
            also=("python -m dpnet_runtime",)),
    Program("dpnet-train", "dpnet.train.cli:app", "train DPNet episodically",
            also=("python -m dpnet.train", "torchrun -m dpnet.train")),
    Program("dpnet-eval", "dpnet.eval.cli:app", "evaluate a checkpoint on fixed episodes",
            also=("python -m dpnet.eval",)),
    Program("dpnet-info", "dpnet.info:app", "parameter counts of the presets"),
    Program("dpnet-export", "dpnet_export.cli:app",
            "ONNX graphs, the TensorRT lint, TensorRT engines, a Triton repository"),
    Program("dpnet-bench", "dpnet_bench.cli:app",
            "every backend side by side: latency, memory, parity; load-test a server",
            subcommands=(("serve", "dpnet_bench.serve_cli:app"),)),
    Program("dpnet-serve", "dpnet_serve.cli:app", "serve an export over HTTP on Ray Serve",
            subcommands=(("config", "dpnet_serve.cli:config_app"),)),
    Program("dpnet-demo", "dpnet_bench.demo:app",
            "the main job end to end on the synthetic benchmark"),
    Program("python -m dpnet_bench.ccm_micro", "dpnet_bench.ccm_micro:app",
            "the CCM's share of an episode and its scaling with feature size"),
    Program("python -m dpnet_bench.localize", "dpnet_bench.localize:app",
            "where a low-precision graph leaves the FP32 one, node by node"),
    Program("python -m dpnet_bench.int8_parts", "dpnet_bench.int8_parts:app",
            "where the INT8 graphs' time goes, part by part, beside FP32's"),
    Program("python -m dpnet_bench.similarity_int8", "dpnet_bench.similarity_int8:app",
            "the CCM similarity per INT8 kernel (QDQ, MatMulInteger, QLinearMatMul) beside FP32"),
    Program("python -m dpnet_bench.soak", "dpnet_bench.soak:app",
            "many queries against one support set: memory and latency drift"),
    Program("python -m dpnet_bench.ablation", "dpnet_bench.ablation:app",
            "the paper's Table 3/4 ablations on the synthetic benchmark"),
)  # fmt: skip


def console_scripts(pyproject: Path = _ROOT / "pyproject.toml") -> list[str]:
    """The console scripts ``pyproject.toml`` installs."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    return sorted(project["scripts"])


def load_command(app: str) -> Any:
    """The click command of the typer app ``"module:attribute"`` (typer's own click: duck-typed)."""
    module, _, attribute = app.partition(":")
    typer_app = getattr(importlib.import_module(module), attribute)
    return typer.main.get_command(typer_app)


def render_program(program: Program) -> str:
    """The markdown page of one program."""
    command = load_command(program.app)
    parts = [f"# `{program.name}`\n", f"{_sentence(program.summary)}\n"]
    if program.also:
        others = ", ".join(f"`{name}`" for name in program.also)
        parts.append(f"The same command runs as {others}.\n")
    parts.append(_command_body(program.name, command, level=2))
    subcommands = _subcommands(command) + [
        (name, load_command(app)) for name, app in program.subcommands
    ]
    if subcommands:
        parts.append("## Subcommands\n")
        parts.append(
            "\n".join(
                f"- [`{program.name} {name}`](#{_anchor(program.name, name)}): {_short(sub)}"
                for name, sub in subcommands
            )
            + "\n"
        )
        for name, sub in subcommands:
            parts.append(f"## `{program.name} {name}` {{#{_anchor(program.name, name)}}}\n")
            parts.append(_command_body(f"{program.name} {name}", sub, level=3))
    return "\n".join(parts)


def render_index() -> str:
    """The reference's first page: every program with its one-line summary."""
    rows = "\n".join(
        f"| [`{program.name}`]({program.slug}.md) | {program.summary} |" for program in PROGRAMS
    )
    return (
        f"# {_NAV_TITLE}\n\n"
        "Every command dpnet installs and every `python -m` tool, with every option, generated "
        "from the commands themselves when this site is built: what `--help` prints, as pages. "
        "The vocabulary they share (what `--model`, `--out` or `--precision` mean everywhere) "
        "is in [Command-line conventions](../../cli.md).\n\n"
        "| command | what it does |\n|---|---|\n"
        f"{rows}\n"
    )


def on_config(config: MkDocsConfig) -> MkDocsConfig:
    """Add the reference's pages to the nav (under "Reference", created if absent)."""
    missing = sorted(set(console_scripts()) - {program.name for program in PROGRAMS})
    if missing:
        _LOG.warning("console scripts missing from the CLI reference: %s", ", ".join(missing))
    entries: list[Any] = [{"Overview": f"{_SECTION}/index.md"}]
    entries += [{program.name: program.page} for program in PROGRAMS]
    nav = config.nav if config.nav is not None else []
    reference = next((item for item in nav if isinstance(item, dict) and "Reference" in item), None)
    if reference is None:
        reference = {"Reference": []}
        nav.append(reference)
    reference["Reference"].insert(0, {_NAV_TITLE: entries})
    config.nav = nav
    return config


def on_files(files: Files, config: MkDocsConfig) -> Files:
    """Generate the reference's pages."""
    files.append(File.generated(config, f"{_SECTION}/index.md", content=render_index()))
    for program in PROGRAMS:
        files.append(File.generated(config, program.page, content=render_program(program)))
    return files


def _command_body(prog: str, command: Any, level: int) -> str:
    context = command.context_class(command, info_name=prog)
    parts = [_help_markdown(command.help or "")]
    usage = " ".join([prog, *command.collect_usage_pieces(context)])
    parts.append(f"```text\nUsage: {usage}\n```\n")
    rows = []
    for param in command.get_params(context):
        record = param.get_help_record(context)
        if record is None:  # hidden options (deprecated spellings) stay out of the reference
            continue
        names, text = record
        rows.append(f"| `{names}` | {_cell(text)} |")
    if any("`--help`" not in row for row in rows):  # a table of --help alone says nothing
        parts.append(f"{'#' * level} Options\n\n| option | meaning |\n|---|---|\n")
        parts[-1] += "\n".join(rows) + "\n"
    return "\n".join(parts)


def _subcommands(command: Any) -> list[tuple[str, Any]]:
    if not hasattr(command, "list_commands"):
        return []
    names = command.list_commands(command.context_class(command))
    return [(name, command.commands[name]) for name in names]


def _short(command: Any) -> str:
    return _escape(command.get_short_help_str(limit=120))


def _anchor(*names: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", " ".join(names).lower()).strip("-")


def _help_markdown(text: str) -> str:
    paragraphs = [block for block in re.split(r"\n\s*\n", text.replace("\b", "")) if block.strip()]
    rendered = []
    for block in paragraphs:
        lines = block.splitlines()
        if all(line.lstrip().startswith(("- ", "* ")) for line in lines):  # a list, item by line
            rendered.append("\n".join(f"- {_escape(line.lstrip()[2:].strip())}" for line in lines))
        elif any(line.startswith(("  ", "\t")) for line in lines[1:]) or block.startswith("  "):
            rendered.append("```text\n" + "\n".join(line.rstrip() for line in lines) + "\n```")
        else:
            rendered.append(_escape(" ".join(line.strip() for line in lines)))
    return "\n\n".join(rendered) + "\n"


def _cell(text: str) -> str:
    # click appends "  [default: x; required]" to the help: shown as its own sentence.
    match = re.search(r"\s*\[([^\[\]]*)\]\s*$", text)
    extra = ""
    if match and re.match(r"(default|required|env var)", match.group(1)):
        text = text[: match.start()]
        extra = " " + "; ".join(f"*{_escape(item.strip())}*" for item in match.group(1).split(";"))
    return (_escape(" ".join(text.split())) + extra).strip() or " "


def _escape(text: str) -> str:
    text = html.escape(text, quote=False)
    return re.sub(r"([\\`*_\[\]|{}])", r"\\\1", text)


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + "."
