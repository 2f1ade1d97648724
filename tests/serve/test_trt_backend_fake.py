"""dpnet-serve --backend trt with its default options, on a FAKE TensorRT engine.

TensorRT cannot run here, so the server process and its Ray workers import the fakes of
tests/fake_trt.py through import shims on their PYTHONPATH (``write_import_shims``): the engine
is built by ``onnx_to_engine`` against the fake, from the session's real export, and computes the
fake's known function. The served masks must be the ones an in-process Predictor on the same
fake engine gives; nothing else about the server is faked (real Ray Serve on 127.0.0.1).
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from fake_trt import FakeTensorRT, install_fake_cuda, process_fakes, write_import_shims

from dpnet.data.episode import Episode
from dpnet_export.onnx_to_engine import EngineBuildOptions, onnx_to_engine
from dpnet_runtime import Predictor, contract
from dpnet_serve import Client

from .conftest import Server, start_server, stop_server, support_masks

pytestmark = pytest.mark.slow


@pytest.fixture
def fake_gpu(monkeypatch: pytest.MonkeyPatch) -> FakeTensorRT:
    # The version and GPU of the shims, so the engine built here runs in the server.
    fake = FakeTensorRT(process_fakes()[0].version, cuda=install_fake_cuda(monkeypatch))
    monkeypatch.setitem(sys.modules, "tensorrt", fake.module())
    return fake


@pytest.fixture
def engine_dir(balanced_export_dir: Path, tmp_path: Path, fake_gpu: FakeTensorRT) -> Path:
    """The session's export with only an FP16 engine (of its graph stamped fp16): without
    ``--precision`` the trt backend must find it on its own."""
    folder = tmp_path / "export"
    shutil.copytree(balanced_export_dir, folder)
    graph = onnx.load(folder / "dpnet.onnx")
    props = {prop.key: prop.value for prop in graph.metadata_props}
    onnx.helper.set_model_props(graph, {**props, contract.META_PRECISION: "fp16"})
    onnx.save(graph, folder / contract.FORMATS["trt-fp16"].onnx_name("episode"))
    onnx_to_engine(EngineBuildOptions(folder, precision="fp16"))
    return folder


@pytest.fixture
def trt_server(engine_dir: Path, tmp_path: Path) -> Iterator[Server]:
    shims = write_import_shims(tmp_path / "shims")
    tests = Path(__file__).resolve().parents[1]
    path = os.pathsep.join([str(shims), str(tests), os.environ.get("PYTHONPATH", "")])
    running = start_server(engine_dir, "--backend", "trt", environment={"PYTHONPATH": path})
    yield running
    stop_server(running)


def test_fake_trt_backend_serves_with_default_options(
    trt_server: Server, engine_dir: Path, episodes: list[Episode]
) -> None:
    episode = episodes[0]
    masks = support_masks(episode)
    queries = [episode.query_image, episodes[1].query_image[:100, 10:]]
    with Predictor.open(engine_dir, "trt") as predictor:
        assert predictor.format == contract.FORMATS["trt-fp16"]
        support = predictor.encode_support(list(episode.support_images), masks)
        expected = [predictor.segment(query, support).mask for query in queries]
    assert any(0 < mask.sum() < mask.size for mask in expected), "test needs non-trivial masks"
    with Client(trt_server.url, timeout_s=120) as client:
        info = client.register("cat", list(episode.support_images), masks)
        assert (info.name, info.shots) == ("cat", len(masks))
        for query, want in zip(queries, expected, strict=True):
            np.testing.assert_array_equal(client.segment("cat", query), want)
        episode_mask = client.episode(list(episode.support_images), masks, queries[0])
    np.testing.assert_array_equal(episode_mask, expected[0])
