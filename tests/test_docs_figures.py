"""The figures the docs state are those of the code and the tests."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from dpnet.config import preset
from dpnet.model import build_dpnet, count_parameters

ROOT = Path(__file__).resolve().parents[1]


def _docs() -> str:
    """Every docs page, with every run of whitespace (line breaks included) folded to one space."""
    pages = sorted((ROOT / "docs").rglob("*.md"))
    return " ".join(" ".join(page.read_text(encoding="utf-8").split()) for page in pages)


def test_docs_states_the_paper_configs_parameter_count() -> None:
    total, trainable = count_parameters(build_dpnet(preset("paper"), pretrained_backbone=False))
    millions = [f"{count / 1e6:.2f}M" for count in (total, trainable, total - trainable)]
    docs = _docs()
    assert (
        f"the `paper` config has **{millions[0]}** parameters, {millions[1]} of them trainable "
        f"and {millions[2]} in the frozen trunk"
    ) in docs
    assert (
        f"The paper config has {millions[0]} parameters ({millions[1]} trainable, {millions[2]} "
        "in the frozen trunk)"
    ) in docs


@pytest.mark.slow
def test_docs_counts_the_bad_file_cases_pytest_collects() -> None:
    module = "tests/hardening/test_bad_files.py"
    collected = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", module],
        capture_output=True, text=True, cwd=ROOT, timeout=300, check=True,
    ).stdout  # fmt: skip
    cases = sum(1 for line in collected.splitlines() if line.startswith(f"{module}::"))
    stated = re.search(rf"\(`{module}`, (\d+) cases\)", _docs())
    assert stated is not None, f"the docs no longer state how many cases {module} has"
    assert int(stated.group(1)) == cases
