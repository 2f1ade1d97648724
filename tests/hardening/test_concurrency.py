"""Predictor is documented thread-safe: N threads at once give exactly the serial results, and a
runner that is not thread-safe (TensorRT's) is entered by one thread at a time."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from dpnet_runtime import Predictor, SegmentResult, contract
from dpnet_runtime.backends.ort import OrtRunner
from dpnet_runtime.backends.trt import TrtRunner

pytestmark = pytest.mark.slow

THREADS = 6
ROUNDS = 4


@pytest.fixture(scope="module")
def predictor(small_export: Path) -> Iterator[Predictor]:
    with Predictor.open(small_export, intra_op_threads=1) as opened:
        yield opened


def _scenes(count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(3)
    scenes = []
    for index in range(count):
        height, width = 40 + 9 * index, 90 - 5 * index
        mask = np.zeros((height, width), np.uint8)
        mask[index : height // 2 + index, 5 : width // 2] = 1
        scenes.append((rng.integers(0, 256, (height, width, 3), dtype=np.uint8), mask))
    return scenes


def _same(a: SegmentResult, b: SegmentResult) -> bool:
    return (
        np.array_equal(a.mask, b.mask)
        and np.array_equal(a.logits, b.logits)
        and np.array_equal(a.probability, b.probability)
        and a.pseudo_count == b.pseudo_count
    )


def _in_threads(work: Callable[[int], SegmentResult]) -> list[SegmentResult]:
    """Run ``work(i)`` for every thread index, all released at once by a barrier."""
    barrier = threading.Barrier(THREADS)

    def start(index: int) -> list[SegmentResult]:
        barrier.wait()
        return [work(index) for _ in range(ROUNDS)]

    with ThreadPoolExecutor(THREADS) as pool:
        per_thread = list(pool.map(start, range(THREADS)))
    return [results[-1] for results in per_thread if all(_same(r, results[0]) for r in results)]


def test_threads_segmenting_at_once_match_the_serial_results(predictor: Predictor) -> None:
    scenes = _scenes(THREADS)
    support = predictor.encode_support([scenes[0][0]], [scenes[0][1]])
    serial = [predictor.segment(image, support) for image, _ in scenes]
    threaded = _in_threads(lambda index: predictor.segment(scenes[index][0], support))
    assert len(threaded) == THREADS, "a thread's repeated results differed"
    assert all(_same(a, b) for a, b in zip(threaded, serial, strict=True))


@pytest.mark.parametrize("path", ["encode_support+segment", "run_episode"])
def test_threads_encoding_supports_at_once_match_the_serial_results(
    predictor: Predictor, path: str
) -> None:
    scenes = _scenes(THREADS)
    query = scenes[-1][0]

    def work(index: int) -> SegmentResult:
        images, masks = [scenes[index][0], scenes[0][0]], [scenes[index][1], scenes[0][1]]
        if path == "run_episode":
            return predictor.run_episode(images, masks, query)
        return predictor.segment(query, predictor.encode_support(images, masks))

    serial = [work(index) for index in range(THREADS)]
    threaded = _in_threads(work)
    assert len(threaded) == THREADS, "a thread's repeated results differed"
    assert all(_same(a, b) for a, b in zip(threaded, serial, strict=True))
    assert len({result.logits.tobytes() for result in serial}) == THREADS, "supports must differ"


class _Occupancy:
    """How many threads are inside the runners' ``_infer`` now, and the most seen at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = 0
        self.most = 0

    def enter(self) -> None:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)

    def leave(self) -> None:
        with self.lock:
            self.now -= 1


class _CountingRunner(OrtRunner):
    """An OrtRunner that reports every entry into ``_infer`` to an :class:`_Occupancy`; each
    call lingers a little so that overlapping calls really overlap."""

    def __init__(self, path: Path, *, thread_safe: bool, occupancy: _Occupancy) -> None:
        super().__init__(path, intra_op_threads=1)
        self.thread_safe = thread_safe  # type: ignore[misc]
        self._occupancy = occupancy

    def _infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._occupancy.enter()
        try:
            time.sleep(0.02)
            return super()._infer(feed)
        finally:
            self._occupancy.leave()


def _most_threads_inside(export: Path, *, thread_safe: bool) -> int:
    occupancy = _Occupancy()
    runners = {
        role: _CountingRunner(
            export / contract.FORMATS["ort"].file_name(role),
            thread_safe=thread_safe,
            occupancy=occupancy,
        )
        for role in contract.GRAPHS
    }
    for runner in runners.values():
        runner.activate()
    scenes = _scenes(THREADS)
    with Predictor(runners) as predictor:
        support = predictor.encode_support([scenes[0][0]], [scenes[0][1]])
        _in_threads(lambda index: predictor.segment(scenes[index][0], support))
        _in_threads(
            lambda index: predictor.run_episode(
                [scenes[index][0]], [scenes[index][1]], scenes[0][0]
            )
        )
    return occupancy.most


def test_a_runner_that_is_not_thread_safe_is_entered_by_one_thread_at_a_time(
    small_export: Path,
) -> None:
    # docs/runtime.md: TensorRT calls are serialised by a lock, as for any runner not thread-safe.
    assert not TrtRunner.thread_safe
    assert _most_threads_inside(small_export, thread_safe=False) == 1
    # The same runners declared thread-safe do overlap: the count above can see concurrency.
    assert _most_threads_inside(small_export, thread_safe=True) > 1
