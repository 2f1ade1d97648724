"""The documentation site: it builds strictly, its CLI reference covers every command, option and
subcommand, the API pages render, and the README and code point at pages that exist."""

from __future__ import annotations

import html
import importlib
import inspect
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
from docs_snippets import ROOT, load_cli_reference
from markdown.extensions.toc import slugify
from PIL import Image

_OUTSIDE = ("DESIGN" + ".md", "STYLE" + ".md")  # the shared files the repository once cited


def _console_scripts() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return dict(project["scripts"])


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``mkdocs build --strict`` into a temporary folder; any warning fails it (and this)."""
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )  # fmt: skip
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-6000:]
    assert "WARNING" not in log, log[-6000:]
    return out


def _text(page: Path) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", page.read_text(encoding="utf-8")))


@pytest.mark.slow
def test_site_builds_strictly_with_every_page(site: Path) -> None:
    for page in sorted((ROOT / "docs").rglob("*.md")):
        relative = page.relative_to(ROOT / "docs").with_suffix("")
        folder = relative.parent if relative.name == "index" else relative
        assert (site / folder / "index.html").is_file(), f"{page} was not built"


@pytest.mark.slow
def test_cli_reference_covers_every_console_script_option_and_subcommand(site: Path) -> None:
    reference = load_cli_reference()
    programs = {program.name: program for program in reference.PROGRAMS}
    assert set(_console_scripts()) <= set(programs), "console scripts missing from the reference"
    for script, entry in _console_scripts().items():
        # The reference's app is the one the entry point runs.
        module, _, function = entry.partition(":")
        source = inspect.getsource(getattr(importlib.import_module(module), function))
        app_module = programs[script].app.partition(":")[0]
        assert app_module == module or f'"{app_module}:' in source, (script, entry)
    for program in reference.PROGRAMS:
        page = _text(site / "reference" / "cli" / program.slug / "index.html")
        assert program.name in page
        commands = [(program.name, reference.load_command(program.app))]
        commands += [
            (f"{program.name} {name}", reference.load_command(app))
            for name, app in program.subcommands
        ]
        while commands:
            name, command = commands.pop()
            assert f"Usage: {name}" in page, f"{name} is not in its reference page"
            for param in command.params:
                if not getattr(param, "hidden", False):
                    for option in param.opts:
                        assert option in page, f"{name} {option} is not in the reference"
            subcommands = getattr(command, "commands", {})
            commands += [(f"{name} {sub}", cmd) for sub, cmd in subcommands.items()]
    assert "dpnet-bench serve" in _text(site / "reference" / "cli" / "dpnet-bench" / "index.html")


@pytest.mark.slow
def test_api_pages_document_what_users_call(site: Path) -> None:
    expected = {
        "runtime": ["dpnet_runtime.Predictor.open", "dpnet_runtime.Predictor.segment",
                    "dpnet_runtime.contract.FORMATS", "dpnet_runtime.errors.InputError"],
        "serve": ["dpnet_serve.Client.register", "dpnet_serve.Client.segment"],
        "model": ["dpnet.model.build_dpnet", "dpnet.config.preset", "dpnet.train.loop.train"],
        "export": ["dpnet_export.torch_to_onnx.export_onnx", "dpnet_export.lint.lint_onnx"],
    }  # fmt: skip
    for page, identifiers in expected.items():
        built = (site / "reference" / "api" / page / "index.html").read_text(encoding="utf-8")
        for identifier in identifiers:
            assert f'id="{identifier}"' in built, f"{identifier} is not on the {page} API page"


def test_readme_is_a_short_landing_page_whose_links_exist() -> None:
    readme = ROOT / "README.md"
    assert readme.stat().st_size < 10_000
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme.read_text(encoding="utf-8"))
    local = [link for link in links if "://" not in link]
    assert len(local) >= 10, local
    missing = [link for link in local if not (ROOT / link).exists()]
    assert not missing, missing


def test_nothing_cites_design_files_outside_the_repository() -> None:
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    citing = [
        name for name in tracked
        if (ROOT / name).is_file() and name.endswith((".py", ".md", ".toml", ".sh", ".yml"))
        and any(outside in (ROOT / name).read_text(encoding="utf-8") for outside in _OUTSIDE)
    ]  # fmt: skip
    assert not citing, citing


def test_design_sections_cited_in_the_repository_exist() -> None:
    design = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")
    anchors = {slugify(heading.strip(), "-") for heading in re.findall(r"^#+ (.+)$", design, re.M)}
    cited: dict[str, str] = {}
    for path in [*ROOT.glob("*.toml"), *ROOT.glob("*/**/*.py"), *ROOT.glob("benchmarks/**/*.md")]:
        if ".venv" in path.parts:
            continue
        for anchor in re.findall(r"docs/design\.md#([\w-]+)", path.read_text(encoding="utf-8")):
            cited[anchor] = str(path.relative_to(ROOT))
    assert len(cited) >= 6, cited
    missing = {anchor: where for anchor, where in cited.items() if anchor not in anchors}
    assert not missing, missing


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("chromium") is None and shutil.which("chromium-browser") is None,
    reason="chromium is not installed (apt-get install chromium); CI has none",
)
def test_screenshot_script_draws_the_pages(site: Path, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "screenshots.py"), "--site", str(site),
         "--out", str(tmp_path), "--page", "index", "--page", "cli-reference",
         "--width", "800", "--height", "600"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    for name in ("index", "cli-reference"):
        with Image.open(tmp_path / f"{name}.png") as picture:
            assert picture.size == (800, 600)
            pixels = np.asarray(picture.convert("L"))
        # A rendered page: the white page, dark text and the coloured header, not a blank.
        assert pixels.min() < 60 and pixels.max() > 240 and pixels.std() > 20, name
