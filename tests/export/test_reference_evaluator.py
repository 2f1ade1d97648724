"""Every exported graph means the same in the ONNX reference implementation as in ONNX Runtime.

``onnx.reference.ReferenceEvaluator`` is the specification's own Python implementation; ONNX
Runtime is what dpnet ships. A graph whose numbers differ between the two depends on a case
the specification leaves to the runtime (the ceil-mode AveragePool partial window was one:
the MSF exported it until it was padded to full windows), and TensorRT may take either side.
The graphs of the briefly trained tiny model run on synthetic episodes: the episode graph,
the split pair (the query graph fed the support graph's cache), the raw-input graphs and
the FP16 copies.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

from dpnet.data import build_dataset
from dpnet_export.torch_to_onnx import ExportOptions, export_onnx
from dpnet_runtime import contract
from dpnet_runtime.preprocess import normalize_images

pytestmark = pytest.mark.slow

SIZE = 129
# FP32 graphs agree to float rounding; the partial-window divisor moved logits by 1e-3 (random
# tiny model) to 0.67 (the measurement), so 1e-4 tells the two apart.
FLOAT_TOLERANCE = {"fp32": 1e-4, "fp16": 2e-3}
# FP16 convolutions round differently in numpy and ONNX Runtime: a few near-tie positions
# of the confidence set may flip, never more than this share.
MIN_AGREEMENT = {"fp32": 1.0, "fp16": 0.99}


class GatherElements(OpRun):
    """The reference GatherElements uses ``np.choose``, limited to 64 choices (the CCM gathers
    over h*w positions); ``take_along_axis`` is the same operation without that limit."""

    op_domain = ""

    def _run(self, data: np.ndarray, indices: np.ndarray, axis: int = 0) -> tuple[np.ndarray]:
        positive = np.where(indices < 0, indices + data.shape[axis], indices)
        return (np.take_along_axis(data, positive, axis=axis),)


@pytest.fixture(scope="module")
def raw_export_dir(tiny_trained_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out_dir = tmp_path_factory.mktemp("export") / "raw"
    export_onnx(tiny_trained_checkpoint, out_dir, ExportOptions(raw_input=True))
    return out_dir


def _episodes(count: int) -> Iterator[dict[str, np.ndarray]]:
    """Raw uint8 episodes (B = 1, K = 2) of the synthetic benchmark."""
    dataset = build_dataset(
        "synthetic", root=None, fold=0, split="val", shots=2, seed=3, episodes=count,
        image_size=SIZE,
    )  # fmt: skip
    for index in range(count):
        episode = dataset[index]
        yield {
            contract.SUPPORT_IMAGES: np.stack(episode.support_images)[None],
            contract.SUPPORT_MASKS: (np.stack(episode.support_masks) == 1).astype(np.uint8)[None],
            contract.QUERY_IMAGE: episode.query_image[None],
        }


def _float_feed(raw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {
        contract.SUPPORT_IMAGES: normalize_images(raw[contract.SUPPORT_IMAGES]),
        contract.SUPPORT_MASKS: raw[contract.SUPPORT_MASKS].astype(np.float32),
        contract.QUERY_IMAGE: normalize_images(raw[contract.QUERY_IMAGE]),
    }


def _both(path: Path, feed: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], ...]:
    """(reference outputs, ONNX Runtime outputs) of one graph on one feed."""
    model = onnx.load(str(path))
    names = [output.name for output in model.graph.output]
    reference = ReferenceEvaluator(model, new_ops=[GatherElements]).run(None, feed)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    runtime = session.run(names, feed)
    return dict(zip(names, reference, strict=True)), dict(zip(names, runtime, strict=True))


def _assert_agree(
    graph: str, reference: dict[str, np.ndarray], runtime: dict[str, np.ndarray], precision: str
) -> None:
    for name, expected in runtime.items():
        got = reference[name]
        assert got.shape == expected.shape and got.dtype == expected.dtype, (graph, name)
        if np.issubdtype(expected.dtype, np.floating):
            assert np.isfinite(got).all(), (graph, name)
            diff = float(np.abs(got.astype(np.float64) - expected).max())
            assert diff <= FLOAT_TOLERANCE[precision], (graph, name, diff)
        else:
            agreement = float((got == expected).mean())
            assert agreement >= MIN_AGREEMENT[precision], (graph, name, agreement)


def _graph_pairs(folder: Path, precision: str) -> dict[str, Path]:
    row = contract.find_format("ort", precision)
    return {role: folder / row.file_name(role) for role in contract.GRAPHS}


def _check_folder(folder: Path, precision: str, feeds: list[dict[str, np.ndarray]]) -> None:
    graphs = _graph_pairs(folder, precision)
    for feed in feeds:
        _assert_agree("episode", *_both(graphs["episode"], feed), precision)
        support = {name: feed[name] for name in (contract.SUPPORT_IMAGES, contract.SUPPORT_MASKS)}
        reference_cache, runtime_cache = _both(graphs["support"], support)
        _assert_agree("support", reference_cache, runtime_cache, precision)
        # Both runtimes segment from the same cache, so the query graph is compared alone.
        query = {contract.QUERY_IMAGE: feed[contract.QUERY_IMAGE], **runtime_cache}
        _assert_agree("query", *_both(graphs["query"], query), precision)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_reference_evaluator_agrees_with_onnxruntime(
    tiny_trained_export_dir: Path, precision: str
) -> None:
    feeds = [_float_feed(raw) for raw in _episodes(2 if precision == "fp32" else 1)]
    _check_folder(tiny_trained_export_dir, precision, feeds)


def test_reference_evaluator_agrees_on_raw_input_graphs(raw_export_dir: Path) -> None:
    _check_folder(raw_export_dir, "fp32", list(_episodes(1)))


def test_msf_graphs_pool_without_partial_windows(tiny_trained_export_dir: Path) -> None:
    model = onnx.load(str(tiny_trained_export_dir / "dpnet.onnx"))
    pools = [node for node in model.graph.node if node.op_type == "AveragePool"]
    assert pools  # scales 1/2 and 1/4 (shared by P' and P_q')
    for node in pools:
        attributes = {attr.name: onnx.helper.get_attribute_value(attr) for attr in node.attribute}
        assert attributes.get("ceil_mode", 0) == 0
