"""The Ray Serve application: an ingress that holds the class store, and query heads.

::

    HTTP -> Serve proxy -> Ingress (FastAPI, one replica, on the head node)
                             |   the class store (--store) and /stats counters
                             +-> QueryHead xN   POST /classes/{name}: support graph, once
                                                POST /classes/{name}/segment: query graph

A class is registered once: a :class:`QueryHead` replica runs the support graph and the
ingress keeps the encoded support set in its store. A query goes to a query-head replica
chosen by Ray Serve's model multiplexing, keyed by the class's registration key, so queries of
a class go to replicas that already cache its support set (``@serve.multiplexed``; on a miss
the replica loads it from the ingress); there, ``@serve.batch`` collects queries of one class
into one query-graph call. Per query only the query graph runs, and one Ray call is made: the
counters of ``GET /stats`` travel back with the answer.

Two deployments, not four: each Ray process costs CPU even when idle (about 9 ms/s here), and
a separate registry or support encoder added a process and, for the registry, a call per
query. The same application runs on a multi-node Ray cluster; :func:`app` is the builder
``serve run`` and Serve config files call (``import_path: dpnet_serve.app:app``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, cast

import numpy as np
from ray import serve
from ray.serve import Application, Deployment
from ray.serve.handle import DeploymentHandle

from dpnet_runtime import Predictor, SupportSet
from dpnet_runtime.errors import InputError
from dpnet_serve.ingress import HEAD_NODE_RESOURCE, Ingress
from dpnet_serve.loopback import loopback_replica_listeners
from dpnet_serve.metrics import CacheMetrics
from dpnet_serve.options import (
    ServeOptions,
    is_loopback_host,
    options_from_args,
    read_token,
)
from dpnet_serve.store import open_store

__all__ = [
    "CACHED_CLASSES_PER_REPLICA",
    "QueryHead",
    "QueryResult",
    "app",
    "build_app",
    "check_model",
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


def check_model(options: ServeOptions) -> str:
    """Open the model once here, so that a bad ``model`` or option fails before Serve deploys.

    Returns:
        The export id (checkpoint sha256 and beta) that a ``--store`` folder must match.

    Raises:
        ModelFileError, BackendUnavailableError, InputError: as :meth:`Predictor.open`;
        InputError also when ``max_batch`` exceeds the graph's batch bound.
        IncompatibleModelError: the ``--store`` folder holds classes of another export.
    """
    with open_predictor(options) as predictor:
        export_id = predictor.info.export_id
        bound = predictor.max_batch
    if bound is not None and options.max_batch > bound:
        raise InputError(
            f"--max-batch {options.max_batch} exceeds the graph's batch bound {bound}; pass "
            f"--max-batch {bound} or rebuild the engine with a larger --batch-range"
        )
    open_store(options.store, export_id)
    return export_id


@dataclass(frozen=True)
class QueryResult:
    """A query head's answer to one query.

    Attributes:
        mask: ``uint8 [H, W]`` 0/1, or ``None`` when the registration key is gone (the class
            was replaced or deleted meanwhile).
        batch_size: queries in the query-graph call this one ran in.
        leads_batch: True for one query of each batch (so the batch is counted once).
        graph_runs: query-graph calls of that batch (one per inference scale).
    """

    mask: np.ndarray | None
    batch_size: int
    leads_batch: bool
    graph_runs: int


@serve.deployment
class QueryHead:
    """Encodes support sets and segments queries against cached ones, batching queries of one
    class. Segment requests carry the class's registration key as their multiplexed model id.
    """

    def __init__(self, options: ServeOptions) -> None:
        if is_loopback_host(options.host):
            loopback_replica_listeners()
        self._predictor = open_predictor(options)
        self._cache = CacheMetrics()
        self._ingress: DeploymentHandle | None = None
        self._loaded = False
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
        start = time.perf_counter()
        support = await asyncio.to_thread(self._predictor.encode_support, images, masks)
        encode_ms = (time.perf_counter() - start) * 1e3
        return support, len(support.feeds) if self._predictor.has_split else 0, encode_ms

    async def episode(
        self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray], query: np.ndarray
    ) -> np.ndarray:
        """Segment ``query`` from K support pairs with nothing stored: ``uint8 [H, W]`` 0/1."""
        result = await asyncio.to_thread(self._predictor.run_episode, images, masks, query)
        return result.mask

    async def segment(self, image: np.ndarray, name: str) -> QueryResult:
        """Segment ``image`` (``uint8 [H, W, 3]``) for the request's class ``name``."""
        return await self._segment_batch((image, name))

    async def ready(self) -> bool:
        """True once the replica is up (``GET /readyz``)."""
        return True

    @serve.multiplexed(max_num_models_per_replica=CACHED_CLASSES_PER_REPLICA)
    async def _support(self, key: str) -> SupportSet | None:
        self._loaded = True  # this call is a cache miss
        if self._ingress is None:
            app_name = serve.get_replica_context().app_name
            self._ingress = serve.get_deployment_handle(Ingress.name, app_name)
        support: SupportSet | None = await self._ingress.load.remote(key)
        return support

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)
    async def _segment_batch(self, queries: list[tuple[np.ndarray, str]]) -> list[QueryResult]:
        # Ray Serve splits batches by multiplexed model id: one class per batch, and runs one
        # batch at a time, so the miss flag belongs to this batch.
        self._loaded = False
        support = await self._support(serve.get_multiplexed_model_id())
        self._cache.record(queries[0][1], missed=self._loaded, queries=len(queries))
        count = len(queries)
        if support is None:
            return [QueryResult(None, count, index == 0, 0) for index in range(count)]
        images = [image for image, _ in queries]
        results = await asyncio.to_thread(self._predictor.segment_batch, images, support)
        runs = len(support.feeds)
        return [
            QueryResult(result.mask, count, index == 0, runs)
            for index, result in enumerate(results)
        ]


# Requests the ingress accepts beyond its own limit: health checks, and the query heads'
# support loads, pass while the limit answers 503 to the rest.
_HEALTH_HEADROOM: Final = 64


def build_app(options: ServeOptions) -> Application:
    """The bound application: the ingress (and its store) and the query heads.

    Opens the model once first (:func:`check_model`) and reads the token (:func:`read_token`).

    Raises:
        InputError: a host off the loopback interface without a token, or a bad option.
        ModelFileError, IncompatibleModelError: see :func:`check_model`.
    """
    export_id = check_model(options)
    token = read_token(options)
    if token is None and not is_loopback_host(options.host):
        raise InputError(
            f"refusing to serve {options.host} without a token: anyone who reaches it could "
            "replace or delete classes; give --token-file FILE or set DPNET_SERVE_TOKEN (or "
            "serve 127.0.0.1)"
        )
    compute = {"num_cpus": options.replica_threads}
    scaling: dict[str, Any] = (
        {
            "autoscaling_config": {
                "min_replicas": options.min_replicas or 0,
                "initial_replicas": options.replicas,
                "max_replicas": options.max_replicas,
                "target_ongoing_requests": options.target_ongoing_requests,
            }
        }
        if options.autoscaling
        else {"num_replicas": options.replicas}
    )
    # @serve.deployment made these classes Deployments; Ray's stubs still show the classes.
    query = (
        cast(Deployment, QueryHead)
        .options(
            max_ongoing_requests=2 * options.max_batch,
            max_queued_requests=options.max_queued_requests,
            graceful_shutdown_timeout_s=options.drain_timeout_s,
            ray_actor_options=compute,
            **scaling,
        )
        .bind(options)
    )
    return (
        cast(Deployment, Ingress)
        .options(
            max_ongoing_requests=options.max_ongoing_requests + _HEALTH_HEADROOM,
            graceful_shutdown_timeout_s=options.drain_timeout_s,
            ray_actor_options={"num_cpus": 0, "resources": {HEAD_NODE_RESOURCE: 0.001}},
        )
        .bind(options, export_id, token, query)
    )


def app(args: Mapping[str, Any]) -> Application:
    """The Serve application builder: ``serve run dpnet_serve.app:app model=DIR replicas=2``,
    or ``import_path: dpnet_serve.app:app`` with ``args:`` in a Serve config file.

    Args:
        args: :class:`ServeOptions` fields by name (values as strings or typed); ``model`` is
            required. The token comes from ``token_file`` or ``$DPNET_SERVE_TOKEN``.

    Raises:
        InputError: an unknown or malformed argument, or no ``model``.
    """
    return build_app(options_from_args(args))
