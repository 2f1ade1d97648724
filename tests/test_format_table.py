"""The format table is the one source of every precision fact: a fake row added to it reaches the
export CLI's choices and help, the exporter, the runtime, the bench's rows and gates, and the docs
table; and the docs table is the table's.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from fake_precision import FAKE_LIMITS, FAKE_ROW

from dpnet_bench.schema import BackendResult, BenchOptions
from dpnet_bench.suite import _check_options
from dpnet_bench.targets import parity_targets
from dpnet_export.low_precision import load_converter
from dpnet_export.torch_to_onnx import ExportOptions, export_onnx
from dpnet_runtime import Predictor, contract
from dpnet_runtime.formats import (
    DOCS_TABLE_BEGIN,
    DOCS_TABLE_END,
    converted_precisions,
    formats_markdown,
    parity_limits,
    precisions,
)

DOCS = Path(__file__).resolve().parents[1] / "docs" / "runtime.md"


@pytest.fixture
def fake_row(monkeypatch: pytest.MonkeyPatch) -> contract.Format:
    monkeypatch.setitem(contract.FORMATS, FAKE_ROW.name, FAKE_ROW)
    return FAKE_ROW


def _cli_with_fake_row(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    code = f"import fake_precision; fake_precision.install(); from {module} import main; main()"
    tests = str(Path(__file__).resolve().parent)
    env = {**os.environ, "PYTHONPATH": tests, "COLUMNS": "400"}
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_fake_row_reaches_the_derived_lists_gates_and_docs_table(fake_row) -> None:
    assert fake_row.name == "ort-fp8" and fake_row.file_name("query") == "dpnet_query_fp8.onnx"
    assert "fp8" in precisions("ort") and "fp8" not in precisions("trt")
    assert converted_precisions()[-1] == "fp8"
    assert parity_limits("fp8") == FAKE_LIMITS
    assert BenchOptions(checkpoint=Path("m.pt")).limits_for("fp8") == FAKE_LIMITS
    _check_options(BenchOptions(checkpoint=Path("m.pt"), backends=("torch", "ort-fp8")))
    row = BackendResult("ort-fp8", "fp8", "cpu", "unavailable", "not exported")
    gates = {t.name: t for t in parity_targets((row,), BenchOptions(Path("m.pt")).limits_for)}
    assert (gates["ort_fp8_miou_delta_pt"].limit, gates["ort_fp8_miou_delta_pt"].gate) == (
        0.7,
        True,
    )
    assert gates["ort_fp8_pixel_agreement_pct"].limit == 95.5
    assert "| `ort-fp8` | ort | fp8 | cpu | `dpnet_fp8.onnx`" in formats_markdown()
    assert load_converter(fake_row.converter) is not None


@pytest.mark.slow
def test_fake_row_reaches_the_help_and_choices_of_every_cli() -> None:
    export = _cli_with_fake_row("dpnet_export.cli", "onnx", "--help")
    assert export.returncode == 0, export.stderr
    exported = _words(export.stdout)
    assert "(fp16,int8,fp8)" in exported and "fp8: FAKE fp8 copies" in exported, exported
    segment = _cli_with_fake_row("dpnet_runtime.cli", "--help")
    assert "fp32, fp16, int8, fp8" in _words(segment.stdout), segment.stdout
    bench = _words(_cli_with_fake_row("dpnet_bench.cli", "--help").stdout)
    assert "ort-fp8" in bench and "fp8 0.7" in bench, bench
    refused = _cli_with_fake_row("dpnet_export.cli", "onnx", "--ckpt", "m.pt", "--precision", "fp9")
    assert refused.returncode == 2 and "is not one of fp16, int8, fp8" in refused.stderr


def _words(text: str) -> str:
    # Help text wraps where the terminal width says; the words stay.
    return " ".join(text.split())


@pytest.mark.slow
def test_fake_row_is_exported_stamped_linted_and_opened(
    fake_row, small_checkpoint: Path, tmp_path: Path
) -> None:
    result = export_onnx(
        small_checkpoint, tmp_path, ExportOptions(max_shots=2, precisions=("fp8",))
    )
    assert sorted(path.name for path in result.files) == sorted(
        [*(f"{stem}{tag}.onnx" for stem in ("dpnet", "dpnet_support", "dpnet_query")
           for tag in ("", "_fp8"))]
    )  # fmt: skip
    with Predictor.open(tmp_path, precision="fp8") as predictor:
        assert predictor.precision == "fp8" and predictor.format == fake_row
        assert sorted(path.name for path in predictor.files) == [
            "dpnet_fp8.onnx",
            "dpnet_query_fp8.onnx",
            "dpnet_support_fp8.onnx",
        ]
    with Predictor.open(tmp_path) as predictor:  # FP32 still comes first: the most faithful
        assert predictor.precision == "fp32"


def test_docs_format_table_is_the_table() -> None:
    text = DOCS.read_text(encoding="utf-8")
    assert DOCS_TABLE_BEGIN in text and DOCS_TABLE_END in text, f"{DOCS} lost its table markers"
    written = text.split(DOCS_TABLE_BEGIN, 1)[1].split(DOCS_TABLE_END, 1)[0].strip()
    assert written == formats_markdown(), (
        f"{DOCS} is out of date: paste the output of "
        "python -c 'from dpnet_runtime.formats import formats_markdown; "
        "print(formats_markdown())' between its table markers"
    )


def test_every_row_has_its_own_files_one_limit_per_precision_and_a_resolving_converter() -> None:
    files = [row.file_name(role) for row in contract.FORMATS.values() for role in row.roles]
    assert len(files) == len(set(files))
    for precision in precisions():
        assert parity_limits(precision)  # raises when its rows disagree
    for row in contract.FORMATS.values():
        if row.converter:
            assert callable(load_converter(row.converter)), row.name
        if row.artifact == "engine" and row.source_tag:
            assert row.converter, f"{row.name} is built from graphs nothing writes"
