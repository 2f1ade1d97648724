"""Every shell and Python block of the docs runs, or is marked with why it cannot run here.

The marker convention, the budget substitutions and the workspace the blocks run in are
described in ``tests/docs_snippets.py`` and in docs/development.md ("Documentation"). The pages
whose blocks talk to a server run in ``tests/serve/test_docs_snippets.py``, which starts one.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from docs_snippets import (
    Snippet,
    all_snippets,
    command_words,
    doc_pages,
    load_cli_reference,
    page_workspace,
    parse_page,
    problems,
    run_page,
)

_SNIPPETS = all_snippets()
_PAGES = [page for page in doc_pages() if any(s.runnable for s in parse_page(page))]


def _label(page: Path) -> str:
    return page.name if page.parent.name != "export" else f"export/{page.name}"


def test_docs_hold_shell_and_python_blocks() -> None:
    # The parser sees the blocks (a broken fence pattern would make every check below vacuous).
    languages = [snippet.language for snippet in _SNIPPETS]
    assert languages.count("bash") >= 15 and languages.count("python") >= 4, languages


def test_every_block_is_marked_right() -> None:
    found = [f"{s.label}: {problem}" for s in _SNIPPETS for problem in problems(s)]
    assert not found, "\n".join(found)


def test_every_dpnet_command_in_the_docs_takes_the_options_it_is_shown_with() -> None:
    """Skipped blocks too: a GPU-only command's flags are checked against the command itself."""
    reference = load_cli_reference()
    programs = {program.name: program for program in reference.PROGRAMS}
    for program in reference.PROGRAMS:
        programs.update({alias: program for alias in program.also})
    wrong, checked = [], 0
    for snippet in [s for s in _SNIPPETS if s.language in {"bash", "sh", "shell"}]:
        for words in command_words(snippet.text):
            resolved = _resolve(words, programs, reference)
            if resolved is None:
                continue
            name, command, arguments = resolved
            known = _option_names(command)
            checked += 1
            for word in arguments:
                option = word.split("=", 1)[0]
                if option.startswith("--") and option not in known:
                    wrong.append(f"{snippet.label}: {name} has no option {option}")
    assert checked >= 30, f"only {checked} dpnet command lines found in the docs"
    assert not wrong, "\n".join(wrong)


def _resolve(words: list[str], programs: dict, reference) -> tuple[str, object, list[str]] | None:  # type: ignore[no-untyped-def]
    if words[0] in {"python", "python3", "torchrun"} and "-m" in words:
        module = words[words.index("-m") + 1]
        name, rest = f"python -m {module}", words[words.index("-m") + 2 :]
        if words[0] == "torchrun":
            name = f"torchrun -m {module}"
    else:
        name, rest = words[0], words[1:]
    program = programs.get(name)
    if program is None:
        return None
    command = reference.load_command(program.app)
    extra = dict(program.subcommands)
    if rest and rest[0] in extra:
        return f"{name} {rest[0]}", reference.load_command(extra[rest[0]]), rest[1:]
    while rest and hasattr(command, "commands") and rest[0] in command.commands:
        name, command, rest = f"{name} {rest[0]}", command.commands[rest[0]], rest[1:]
    return name, command, rest


def _option_names(command: object) -> set[str]:
    names = {"--help"}
    for param in command.params:  # type: ignore[attr-defined]
        names.update(param.opts, param.secondary_opts)
    return names


@pytest.mark.parametrize(
    "snippet",
    [s for s in _SNIPPETS if s.runnable and s.whole_skip is not None],
    ids=lambda s: s.label,
)
def test_marked_block(snippet: Snippet) -> None:
    """One skip per block marked as needing what this machine lacks, with the marker's reason."""
    pytest.skip(f"{snippet.label} {snippet.whole_skip}")


@pytest.mark.slow
@pytest.mark.parametrize(
    "page",
    [page for page in _PAGES if not any(s.server for s in parse_page(page))],
    ids=_label,
)
def test_page_blocks_run(page: Path, docs_workspace: Path, tmp_path: Path) -> None:
    snippets = parse_page(page)
    workspace = page_workspace(docs_workspace, tmp_path / "workspace", snippets)
    skipped = run_page(snippets, workspace)
    print("\n".join(["not run:", *skipped]) if skipped else "every block ran")
