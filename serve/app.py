"""The Ray Serve application: a registry, a support encoder and query heads behind an ingress.

::

    HTTP -> Ingress (FastAPI) -> SupportEncoder   POST /classes/{name}: support graph, once
                              -> Registry         the support store and the counters
                              -> QueryHead xN     POST /classes/{name}/segment: query graph

A class is registered once: the :class:`SupportEncoder` runs the support graph and the
:class:`Registry` keeps the encoded support set in its store. A query goes to a
:class:`QueryHead` replica chosen by Ray Serve's model multiplexing, keyed by the class's
registration key, so queries of a class go to replicas that already cache its support set
(``@serve.multiplexed``); there, ``@serve.batch`` collects queries of one class into one
query-graph call. Per query, only the query graph runs. The replicas report how often each
graph ran to the registry (``GET /stats``).

The same application runs unchanged on a multi-node Ray cluster (``dpnet-serve --address``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final, cast

import numpy as np
from ray import serve
from ray.serve import Application, Deployment
from ray.serve.handle import DeploymentHandle

from dpnet_runtime import Predictor, SupportSet
from dpnet_serve.ingress import Ingress
from dpnet_serve.options import ServeOptions
from dpnet_serve.store import ClassInfo, open_store

__all__ = [
    "CACHED_CLASSES_PER_REPLICA",
    "QueryHead",
    "Registry",
    "SupportEncoder",
    "build_app",
    "open_predictor",
]

# Support sets a query-head replica keeps (least recently used ones are dropped): a 5-shot
# class of the paper model caches about 35 MB.
CACHED_CLASSES_PER_REPLICA: Final = 16

logger = logging.getLogger(__name__)


def open_predictor(options: ServeOptions) -> Predictor:
    """The Predictor every replica runs, opened as ``options`` say."""
    runner_options = (
        {"intra_op_threads": options.replica_threads} if options.backend == "ort" else {}
    )
    return Predictor.open(
        options.model, options.backend, precision=options.precision, **runner_options
    )


class _Reporter:
    """Sends counter increments to the registry: now, or in the background for queries."""

    def __init__(self, registry: DeploymentHandle) -> None:
        self._registry = registry
        self._pending: set[asyncio.Task[None]] = set()

    async def send(self, **increments: int) -> None:
        """Count before answering (registrations: the counters are exact when they return)."""
        await self._registry.count.remote(**increments)

    def count(self, **increments: int) -> None:
        """Count in the background, never delaying a query's answer."""
        task = asyncio.get_running_loop().create_task(self.send(**increments))
        self._pending.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._pending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.warning("could not update the counters: %s", task.exception())


@serve.deployment(num_replicas=1, max_ongoing_requests=1000, ray_actor_options={"num_cpus": 0})
class Registry:
    """The one holder of the support store and of the graph-run counters.

    Args:
        store: ``--store`` folder, or ``None`` for memory.
        export_id: the served export's id (a folder store must match it).
    """

    def __init__(self, store: Path | None, export_id: str) -> None:
        self._store = open_store(store, export_id)
        self._counts: Counter[str] = Counter()
        self._batch_sizes: Counter[int] = Counter()

    async def get(self, name: str) -> ClassInfo | None:
        return self._store.get(name)

    async def classes(self) -> list[ClassInfo]:
        return self._store.classes()

    async def add(self, info: ClassInfo, support: SupportSet, replace: bool) -> bool:
        """Store a class; ``False`` (nothing stored) when the name exists and not ``replace``."""
        if not replace and self._store.get(info.name) is not None:
            return False
        self._store.put(info, support)
        return True

    async def delete(self, name: str) -> ClassInfo | None:
        return self._store.delete(name)

    async def load(self, key: str) -> SupportSet | None:
        return self._store.load(key)

    async def count(self, batch_size: int = 0, **increments: int) -> None:
        self._counts.update(increments)
        if batch_size:
            self._batch_sizes[batch_size] += 1

    async def stats(self) -> dict[str, Any]:
        """Counters since start: graph runs, queries, episodes, query batch sizes, classes."""
        return {
            "support_graph_runs": self._counts["support_graph_runs"],
            "query_graph_runs": self._counts["query_graph_runs"],
            "queries": self._counts["queries"],
            "episodes": self._counts["episodes"],
            "batch_sizes": {str(size): n for size, n in sorted(self._batch_sizes.items())},
            "classes": len(self._store.classes()),
        }


@serve.deployment
class SupportEncoder:
    """Runs the support graph of a registration, and whole ``/episode`` requests."""

    def __init__(self, options: ServeOptions, registry: DeploymentHandle) -> None:
        self._predictor = open_predictor(options)
        self._reporter = _Reporter(registry)

    async def encode(
        self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray]
    ) -> tuple[SupportSet, float]:
        """Encode K support pairs (``uint8 [H, W, 3]``, ``uint8 [H, W]`` 0/1).

        Returns:
            The support set and the encoding time in milliseconds.

        Raises:
            InputError: as :meth:`Predictor.encode_support`.
        """
        start = time.perf_counter()
        support = await asyncio.to_thread(self._predictor.encode_support, images, masks)
        encode_ms = (time.perf_counter() - start) * 1e3
        if self._predictor.has_split:
            await self._reporter.send(support_graph_runs=len(support.feeds))
        return support, encode_ms

    async def episode(
        self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray], query: np.ndarray
    ) -> np.ndarray:
        """Segment ``query`` from K support pairs with nothing stored: ``uint8 [H, W]`` 0/1."""
        result = await asyncio.to_thread(self._predictor.run_episode, images, masks, query)
        self._reporter.count(episodes=1)
        return result.mask

    async def ready(self) -> bool:
        """True once the replica is up (``GET /readyz``)."""
        return True


@serve.deployment
class QueryHead:
    """Segments queries against cached support sets, batching queries of one class.

    Requests carry the class's registration key as their multiplexed model id.
    """

    def __init__(self, options: ServeOptions, registry: DeploymentHandle) -> None:
        self._predictor = open_predictor(options)
        self._registry = registry
        self._reporter = _Reporter(registry)
        batching: Any = self._segment_batch  # @serve.batch's wrapper; its stubs show the method
        batching.set_max_batch_size(options.max_batch)
        batching.set_batch_wait_timeout_s(options.batch_wait_ms / 1e3)

    @serve.multiplexed(max_num_models_per_replica=CACHED_CLASSES_PER_REPLICA)
    async def _support(self, key: str) -> SupportSet | None:
        return await self._registry.load.remote(key)

    async def segment(self, image: np.ndarray) -> np.ndarray | None:
        """The ``uint8 [H, W]`` 0/1 mask of ``image`` (``uint8 [H, W, 3]``) for the request's
        class, or ``None`` when the class was deleted meanwhile."""
        return await self._segment_batch(image)

    async def ready(self) -> bool:
        """True once the replica is up (``GET /readyz``)."""
        return True

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)
    async def _segment_batch(self, images: list[np.ndarray]) -> list[np.ndarray | None]:
        # Ray Serve splits batches by multiplexed model id: one class per batch.
        support = await self._support(serve.get_multiplexed_model_id())
        if support is None:
            return [None] * len(images)
        results = await asyncio.to_thread(self._predictor.segment_batch, images, support)
        self._reporter.count(
            query_graph_runs=len(support.feeds), queries=len(images), batch_size=len(images)
        )
        return [result.mask for result in results]


def build_app(options: ServeOptions, export_id: str) -> Application:
    """The bound application: registry, encoder, ``options.replicas`` query heads, ingress."""
    compute = {"num_cpus": options.replica_threads}
    # @serve.deployment made these classes Deployments; Ray's stubs still show the classes.
    registry = cast(Deployment, Registry).bind(options.store, export_id)
    encoder = (
        cast(Deployment, SupportEncoder).options(ray_actor_options=compute).bind(options, registry)
    )
    query = (
        cast(Deployment, QueryHead)
        .options(
            num_replicas=options.replicas,
            max_ongoing_requests=2 * options.max_batch,
            ray_actor_options=compute,
        )
        .bind(options, registry)
    )
    return Ingress.bind(options, registry, encoder, query)
