"""The bench table and the torch subject behind the runner protocol."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from dpnet_bench.schema import BenchOptions
from dpnet_bench.subjects import TorchRunner, open_subject
from dpnet_bench.suite import run_suite
from dpnet_runtime.contract import CONFIDENCE, FORMATS, LOGITS, MASK, PSEUDO_COUNT
from dpnet_runtime.errors import (
    BackendUnavailableError,
    DpnetError,
    IncompatibleModelError,
    InputError,
)


def test_format_table_lists_every_format_once() -> None:
    assert list(FORMATS) == [
        "torch",
        "torch-fp16",
        "ort",
        "ort-fp16",
        "ort-int8",
        "trt",
        "trt-fp16",
        "trt-int8",
    ]
    assert {fmt.precision for fmt in FORMATS.values()} == {"fp32", "fp16", "int8"}


def test_unknown_subject_and_bad_options_are_input_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="unknown backend 'onnx'"):
        open_subject("onnx", tmp_path / "m.pt", tmp_path, threads=1, input_size=129)
    with pytest.raises(InputError, match="unknown backends"):
        run_suite(BenchOptions(checkpoint=tmp_path / "m.pt", backends=("torch", "tensorflow")))
    with pytest.raises(InputError, match="episodes"):
        run_suite(BenchOptions(checkpoint=tmp_path / "m.pt", episodes=0))


def test_torch_runner_returns_contract_outputs(tiny_checkpoint: Path) -> None:
    subject = open_subject("torch", tiny_checkpoint, tiny_checkpoint.parent, threads=1,
                           input_size=129)  # fmt: skip
    rng = np.random.default_rng(0)
    feed = {
        "support_images": rng.standard_normal((1, 2, 3, 129, 129), dtype=np.float32),
        "support_masks": np.ones((1, 2, 129, 129), dtype=np.float32),
        "query_image": rng.standard_normal((1, 3, 129, 129), dtype=np.float32),
    }
    predictor = subject.predictor
    support = {name: feed[name] for name in ("support_images", "support_masks")}
    try:
        episode = predictor.infer_episode(feed)
        split = predictor.infer_query(
            {"query_image": feed["query_image"], **predictor.infer_support(support)}
        )
    finally:
        subject.close()
    assert episode[LOGITS].dtype == np.float32 and episode[LOGITS].shape == (1, 2, 129, 129)
    assert episode[MASK].dtype == np.uint8 and episode[PSEUDO_COUNT].dtype == np.int32
    assert episode[CONFIDENCE].shape == (1, 2, 17, 17)
    np.testing.assert_allclose(split[LOGITS], episode[LOGITS], atol=1e-5)
    assert subject.artifact_bytes == tiny_checkpoint.stat().st_size


def test_torch_runner_failure_on_an_unchecked_feed_stays_a_bug(tiny_checkpoint: Path) -> None:
    # With check_inputs=False the caller vouched for the feed: torch's RuntimeError (a 4-channel
    # image into a 3-channel trunk) is a bug to report, not a user error (docs/design.md#errors).
    feed = {
        "support_images": np.zeros((1, 1, 4, 129, 129), np.float32),
        "support_masks": np.zeros((1, 1, 129, 129), np.float32),
        "query_image": np.zeros((1, 4, 129, 129), np.float32),
    }
    runner = TorchRunner(tiny_checkpoint, graph="episode")
    with runner, pytest.raises(RuntimeError) as info:
        runner.infer(feed, check_inputs=False)
    assert not isinstance(info.value, DpnetError)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the reason shows only without CUDA")
def test_torch_fp16_without_cuda_says_why(tiny_checkpoint: Path) -> None:
    runner = TorchRunner(tiny_checkpoint, graph="episode", device="cuda", precision="fp16")
    with pytest.raises(BackendUnavailableError, match="CUDA"):
        runner.activate()
    cpu_half = TorchRunner(tiny_checkpoint, graph="episode", device="cpu", precision="fp16")
    with pytest.raises(BackendUnavailableError, match="torch fp16 needs CUDA"):
        cpu_half.activate()


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT present")
def test_trt_without_tensorrt_says_why(tmp_path: Path) -> None:
    for name in ("trt", "trt-fp16", "trt-int8"):
        with pytest.raises(BackendUnavailableError, match=r"the trt\S* row needs tensorrt"):
            open_subject(name, tmp_path / "m.pt", tmp_path, threads=1, input_size=129)


def test_a_row_is_labelled_by_its_files_and_a_mislabelled_file_is_refused(
    small_export: Path, small_checkpoint: Path, tmp_path: Path
) -> None:
    subject = open_subject("ort", small_checkpoint, small_export, threads=1, input_size=65)
    try:
        assert subject.predictor.precision == "fp32"  # read from the graphs' metadata
        assert subject.predictor.format is FORMATS["ort"]
    finally:
        subject.close()
    # FP32 graphs copied under the FP16 names: the ort-fp16 row must not run them as FP16.
    for role in ("", "_support", "_query"):
        shutil.copy(small_export / f"dpnet{role}.onnx", tmp_path / f"dpnet{role}_fp16.onnx")
    with pytest.raises(IncompatibleModelError, match=r"holds fp32, not the fp16 asked for"):
        open_subject("ort-fp16", small_checkpoint, tmp_path, threads=1, input_size=65)
