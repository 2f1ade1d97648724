"""The Ray Serve application: an ingress that holds the class store, and query heads.

::

    HTTP -> Serve proxy -> Ingress (FastAPI, one replica, on the head node)
                             |   the class store (--store) and /stats counters
                             +-> QueryHead xN   POST /classes/{name}: support graph, once
                                                POST /classes/{name}/segment: query graph

A class is registered once: a query head runs the support graph and the ingress keeps the
encoded support set in its store. A query goes to a query-head replica chosen by Ray Serve's
model multiplexing, keyed by the class's registration key, so queries of a class go to replicas
that already cache its support set (``@serve.multiplexed``; on a miss the replica loads it from
the ingress); there, ``@serve.batch`` collects queries into one query-graph call per class
(:class:`~dpnet_serve.engine.QueryEngine`). Per query only the query graph runs, and one Ray
call is made: the counters of ``GET /stats`` travel back with the answer.

With one replica and no autoscaling there is nothing to route: the ingress runs the engine
itself, and there is no QueryHead deployment. Each Ray process costs CPU even when idle (about
9 ms/s on 2 cores) and each Ray call a few milliseconds, which a co-located server takes from
the model. The same application runs on a multi-node Ray cluster; :func:`app` is the builder
``serve run`` and Serve config files call (``import_path: dpnet_serve.app:app``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Final, cast

import numpy as np
from ray import serve
from ray.serve import Application, Deployment
from ray.serve.handle import DeploymentHandle

from dpnet_runtime import SupportSet
from dpnet_runtime.errors import InputError
from dpnet_serve.engine import QueryEngine, QueryResult, open_predictor
from dpnet_serve.ingress import CACHED_CLASSES_PER_REPLICA, HEAD_NODE_RESOURCE, Ingress
from dpnet_serve.loopback import loopback_replica_listeners
from dpnet_serve.options import (
    ServeOptions,
    is_loopback_host,
    options_from_args,
    read_token,
)
from dpnet_serve.store import open_store

__all__ = ["QueryHead", "app", "build_app", "check_model"]

logger = logging.getLogger(__name__)


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


@serve.deployment
class QueryHead:
    """A :class:`~dpnet_serve.engine.QueryEngine` behind Ray Serve: segment requests carry
    their class's registration key as the multiplexed model id, and a replica caches the
    support sets of its classes (loaded from the ingress on a miss)."""

    def __init__(self, options: ServeOptions) -> None:
        if is_loopback_host(options.host):
            loopback_replica_listeners()
        self._engine = QueryEngine(options, self._lookup)
        self._ingress: DeploymentHandle | None = None
        self._missed = False

    async def encode(
        self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray]
    ) -> tuple[SupportSet, int, float]:
        """As :meth:`QueryEngine.encode`."""
        return await self._engine.encode(images, masks)

    async def episode(
        self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray], query: np.ndarray
    ) -> np.ndarray:
        """As :meth:`QueryEngine.episode`."""
        return await self._engine.episode(images, masks, query)

    async def segment(self, image: np.ndarray, name: str) -> QueryResult:
        """Segment ``image`` for class ``name``, whose key is the request's model id."""
        return await self._engine.segment(serve.get_multiplexed_model_id(), image, name)

    async def ready(self) -> bool:
        """True once the replica is up (``GET /readyz``)."""
        return True

    async def _lookup(self, key: str) -> tuple[SupportSet | None, bool]:
        # The engine looks up one key at a time, so the miss flag belongs to this lookup.
        self._missed = False
        support = await self._support(key)
        return support, self._missed

    @serve.multiplexed(max_num_models_per_replica=CACHED_CLASSES_PER_REPLICA)
    async def _support(self, key: str) -> SupportSet | None:
        self._missed = True  # only a miss calls the loader
        if self._ingress is None:
            app_name = serve.get_replica_context().app_name
            self._ingress = serve.get_deployment_handle(Ingress.name, app_name)
        support: SupportSet | None = await self._ingress.load.remote(key)
        return support


# Requests the ingress accepts beyond its own limit: health checks, and the query heads'
# support loads, pass while the limit answers 503 to the rest.
_HEALTH_HEADROOM: Final = 64


def build_app(options: ServeOptions) -> Application:
    """The bound application: the ingress (and its store) and the query heads (none with one
    replica and no autoscaling: the ingress runs the model).

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
    # One replica, no autoscaling: the ingress runs the model itself (no QueryHead).
    co_located = not options.autoscaling and options.replicas == 1
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
        None
        if co_located
        else cast(Deployment, QueryHead)
        .options(
            max_ongoing_requests=2 * options.max_batch,
            max_queued_requests=options.max_queued_requests,
            graceful_shutdown_timeout_s=options.drain_timeout_s,
            ray_actor_options=compute,
            **scaling,
        )
        .bind(options)
    )
    head = {"resources": {HEAD_NODE_RESOURCE: 0.001}}
    return (
        cast(Deployment, Ingress)
        .options(
            max_ongoing_requests=options.max_ongoing_requests + _HEALTH_HEADROOM,
            graceful_shutdown_timeout_s=options.drain_timeout_s,
            ray_actor_options={**(compute if co_located else {"num_cpus": 0}), **head},
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
