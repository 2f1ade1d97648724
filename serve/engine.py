"""The model side of dpnet-serve: one Predictor, batching, and where support sets come from.

A :class:`QueryEngine` runs in a query-head replica, or, when the server has one replica and
no autoscaling, in the ingress itself (one process and one Ray call fewer per query). It
encodes support sets, runs one-call episodes, and segments queries: ``@serve.batch`` collects
queries arriving together, and each class's queries of a batch run as one query-graph call.
The support set of a registration key comes from a lookup the host provides (Ray Serve's
multiplexed cache in a query head, a small LRU over the store in the ingress).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
from ray import serve

from dpnet_runtime import Predictor, SupportSet
from dpnet_serve.api_errors import ApiError
from dpnet_serve.metrics import CacheMetrics
from dpnet_serve.options import ServeOptions

__all__ = ["QueryEngine", "QueryResult", "SupportLookup", "open_predictor"]

# key -> (its support set or None when the key is gone, whether it was a cache miss)
SupportLookup = Callable[[str], Awaitable[tuple[SupportSet | None, bool]]]


def open_predictor(options: ServeOptions) -> Predictor:
    """The Predictor a server runs, opened as ``options`` say."""
    runner_options = (
        {"intra_op_threads": options.replica_threads} if options.backend == "ort" else {}
    )
    return Predictor.open(
        options.model, options.backend, precision=options.precision, **runner_options
    )


@dataclass(frozen=True)
class QueryResult:
    """The answer to one query.

    Attributes:
        mask: ``uint8 [H, W]`` 0/1, or ``None`` when the registration key is gone (the class
            was replaced or deleted meanwhile).
        batch_size: queries in the query-graph call this one ran in.
        leads_batch: True for one query of each such call (so the call is counted once).
        graph_runs: query-graph runs of that call (one per inference scale).
    """

    mask: np.ndarray | None
    batch_size: int
    leads_batch: bool
    graph_runs: int


class QueryEngine:
    """Encodes support sets and segments queries, batching queries that arrive together.

    Args:
        options: the model, threads, batching and queue limits.
        lookup: the support set of a registration key (see :data:`SupportLookup`).

    At most ``2 * max_batch + max_queued_requests`` model calls wait or run at once; more get
    :class:`~dpnet_serve.api_errors.ApiError` ``overloaded`` (a query head behind Ray Serve is
    bounded by Serve first, with the same numbers).
    """

    def __init__(self, options: ServeOptions, lookup: SupportLookup) -> None:
        self._predictor = open_predictor(options)
        self._lookup = lookup
        self._cache = CacheMetrics()
        self._limit = 2 * options.max_batch + options.max_queued_requests
        self._pending = 0
        batching: Any = self._segment_batch  # @serve.batch's wrapper; its stubs show the method
        batching.set_max_batch_size(options.max_batch)
        batching.set_batch_wait_timeout_s(options.batch_wait_ms / 1e3)

    async def encode(
        self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray]
    ) -> tuple[SupportSet, int, float]:
        """Encode K support pairs (``uint8 [H, W, 3]``, ``uint8 [H, W]`` 0/1).

        Returns:
            The support set, how many support-graph calls it took (0 without split graphs),
            and the encoding time in milliseconds.

        Raises:
            InputError: as :meth:`Predictor.encode_support`.
        """
        with self._slot():
            start = time.perf_counter()
            support = await asyncio.to_thread(self._predictor.encode_support, images, masks)
        encode_ms = (time.perf_counter() - start) * 1e3
        return support, len(support.feeds) if self._predictor.has_split else 0, encode_ms

    async def episode(
        self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray], query: np.ndarray
    ) -> np.ndarray:
        """Segment ``query`` from K support pairs with nothing stored: ``uint8 [H, W]`` 0/1."""
        with self._slot():
            result = await asyncio.to_thread(self._predictor.run_episode, images, masks, query)
        return result.mask

    async def segment(self, key: str, image: np.ndarray, name: str) -> QueryResult:
        """Segment ``image`` (``uint8 [H, W, 3]``) against registration ``key`` of class
        ``name``."""
        with self._slot():
            result: QueryResult = await self._segment_batch((key, image, name))
        return result

    async def ready(self) -> bool:
        """True: the engine is up."""
        return True

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)
    async def _segment_batch(self, queries: list[tuple[str, np.ndarray, str]]) -> list[QueryResult]:
        results: list[QueryResult | None] = [None] * len(queries)
        for key in dict.fromkeys(key for key, _, _ in queries):  # each class once, in order
            indices = [index for index, query in enumerate(queries) if query[0] == key]
            support, missed = await self._lookup(key)
            self._cache.record(queries[indices[0]][2], missed=missed, queries=len(indices))
            count = len(indices)
            if support is None:
                masks: list[np.ndarray | None] = [None] * count
            else:
                images = [queries[index][1] for index in indices]
                segmented = await asyncio.to_thread(self._predictor.segment_batch, images, support)
                masks = [result.mask for result in segmented]
            runs = 0 if support is None else len(support.feeds)
            for order, (index, mask) in enumerate(zip(indices, masks, strict=True)):
                results[index] = QueryResult(mask, count, order == 0, runs)
        return cast(list[QueryResult], results)  # every index was filled above

    @contextlib.contextmanager
    def _slot(self) -> Iterator[None]:
        """One model call waiting or running; refused past the limit."""
        if self._pending >= self._limit:
            raise ApiError(
                "overloaded",
                "the model is busy and its queue is full (--max-queued-requests); retry after "
                "Retry-After",
                retry_after_s=1,
            )
        self._pending += 1
        try:
            yield
        finally:
            self._pending -= 1
