"""The HTTP API of dpnet-serve: a FastAPI app served by Ray Serve's ``Ingress`` deployment,
which also holds the class store.

Routes (OpenAPI page at ``/docs``, schema at ``/openapi.json``):

- ``POST /classes/{name}[?replace=true]``: multipart ``images`` and ``masks`` (K of each,
  in the same order; masks read as ``dpnet-segment`` reads mask files,
  :data:`dpnet_runtime.masks.MASK_RULES`), and ``class_id`` for label maps -> 201 and the class.
- ``GET /classes``, ``GET /classes/{name}``, ``DELETE /classes/{name}``.
- ``POST /classes/{name}/segment``: multipart ``image`` -> the mask as a 0/255 PNG, or with
  ``Accept: application/json`` the object pixel count and COCO RLE (:mod:`dpnet_serve.wire`).
- ``POST /episode``: multipart ``images``, ``masks``, ``image`` (and ``class_id``); nothing
  is stored.
- ``GET /healthz`` (the ingress answers), ``GET /readyz`` (Serve reports the application
  running and a query head answers), ``GET /stats`` (graph-run counters and query batch sizes
  since start).

Every request first passes :class:`~dpnet_serve.guard.RequestGuard` (token, ``Host``, body
size, limits). Every error is JSON ``{"error": "...", "code": "..."}`` with a code of
:data:`~dpnet_serve.api_errors.ERROR_CODES`; the server keeps serving after any of them.
"""

import asyncio
import logging
import secrets
import uuid
from collections import Counter, OrderedDict
from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import Annotated, Any, Final, TypeVar

import numpy as np
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi import Path as UrlPath
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException

from dpnet_runtime import SupportSet, __version__
from dpnet_runtime.errors import DpnetError, InputError
from dpnet_runtime.masks import mask_rules_markdown
from dpnet_runtime.preprocess import check_mask
from dpnet_serve.api_errors import (
    ApiError,
    ClassExistsError,
    ClassNotFoundError,
    error_body,
    error_code,
    status_of,
)
from dpnet_serve.engine import QueryEngine, QueryResult
from dpnet_serve.guard import RETRY_AFTER_S, AccessPolicy, GuardState, RequestGuard, install
from dpnet_serve.loopback import loopback_replica_listeners
from dpnet_serve.metrics import RequestMetrics
from dpnet_serve.options import ServeOptions, is_loopback_host
from dpnet_serve.store import ClassInfo, SupportStore, open_store
from dpnet_serve.wire import MAX_FILE_BYTES, decode_image, decode_mask, mask_to_png, mask_to_rle

__all__ = ["CACHED_CLASSES_PER_REPLICA", "HEAD_NODE_RESOURCE", "Ingress", "api"]

NAME_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
READY_TIMEOUT_S: Final = 5.0
# Support sets a replica keeps (least recently used ones are dropped): a 5-shot class of the
# paper model caches about 35 MB.
CACHED_CLASSES_PER_REPLICA: Final = 16
HEAD_NODE_RESOURCE: Final = "node:__internal_head__"  # Ray's resource of the head node
_LOST: Final = (RayActorError, ActorUnavailableError)
T = TypeVar("T")

logger = logging.getLogger(__name__)

api = FastAPI(
    title="dpnet-serve",
    version=__version__,
    description="Few-shot segmentation with DPNet: register a class once from 1 to a few "
    "annotated images, then segment any number of images against it.",
)
api.add_middleware(RequestGuard)

ClassName = Annotated[str, UrlPath(pattern=NAME_PATTERN, description="class name")]
Files = Annotated[list[UploadFile], File()]
ClassId = Annotated[
    int | None,
    Form(description="the masks are class-label maps (VOC/COCO): this class is the object"),
]
MASKS_DOC: Final = (
    "Masks are read as `dpnet-segment` reads mask files: the file column of dpnet's mask "
    "table (docs/segment.md).\n\n" + mask_rules_markdown()
)
MASK_RESPONSES: Final[dict[int | str, dict[str, Any]]] = {
    200: {
        "content": {"image/png": {}, "application/json": {}},
        "description": "the mask: a 0/255 PNG, or with Accept: application/json "
        '{"height", "width", "object_pixels", "rle": {"size": [H, W], "counts": [...]}}',
    }
}


# Defined before Ingress: @serve.ingress serialises the routes, and what they call, at once.
def _mask_response(mask: np.ndarray, request: Request) -> Response:
    object_pixels = int(mask.sum())
    if "application/json" in request.headers.get("accept", ""):
        height, width = mask.shape
        return JSONResponse(
            {
                "height": height,
                "width": width,
                "object_pixels": object_pixels,
                "rle": mask_to_rle(mask),
            }
        )
    return Response(
        mask_to_png(mask), media_type="image/png", headers={"X-Object-Pixels": str(object_pixels)}
    )


def _error(code: str, message: str, retry: bool = False) -> Response:
    headers = {"Retry-After": str(RETRY_AFTER_S)} if retry else None
    return Response(
        error_body(code, message),
        status_code=status_of(code),
        media_type="application/json",
        headers=headers,
    )


@api.exception_handler(DpnetError)
async def _dpnet_error(request: Request, exc: DpnetError) -> Response:
    # An error raised in another replica arrives as RayTaskError(<type>); .cause is the original.
    cause = getattr(exc, "cause", None) or exc
    code = error_code(cause)
    if code == "internal_error":  # a server-side fault: its message may name server paths
        error_id = secrets.token_hex(4)
        logger.error("internal error %s: %s", error_id, cause, exc_info=cause)
        return _error(code, f"internal error {error_id}; the server's log has the details")
    retry = isinstance(cause, ApiError) and cause.retry_after_s is not None
    return _error(code, str(cause), retry)


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
    problems = "; ".join(
        f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}" for error in exc.errors()
    )
    return _error("malformed_request", f"malformed request: {problems}")


@api.exception_handler(HTTPException)
async def _http_error(request: Request, exc: HTTPException) -> Response:
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "invalid_input")
    return _error(code, str(exc.detail))


async def _ask(call: Awaitable[T]) -> T:
    """Await a query head. Ray Serve installs its own plain-text handlers for a full queue and
    an unavailable deployment on the app, so both are turned into API errors here."""
    try:
        return await call
    except BackPressureError as exc:
        raise ApiError(
            "overloaded",
            "every query head is busy and the queue is full (--max-queued-requests); retry "
            "after Retry-After",
            retry_after_s=RETRY_AFTER_S,
        ) from exc
    except DeploymentUnavailableError as exc:
        raise ApiError(
            "unavailable", "no query head is running; retry shortly", retry_after_s=RETRY_AFTER_S
        ) from exc


class _RemoteQueries:
    """The query-head deployment, with :class:`~dpnet_serve.engine.QueryEngine`'s methods."""

    def __init__(self, handle: DeploymentHandle) -> None:
        self._handle = handle

    async def encode(
        self, images: list[np.ndarray], masks: list[np.ndarray]
    ) -> tuple[SupportSet, int, float]:
        result: tuple[SupportSet, int, float] = await _ask(
            self._handle.encode.remote(images, masks)
        )
        return result

    async def episode(
        self, images: list[np.ndarray], masks: list[np.ndarray], query: np.ndarray
    ) -> np.ndarray:
        mask: np.ndarray = await _ask(self._handle.episode.remote(images, masks, query))
        return mask

    async def segment(self, key: str, image: np.ndarray, name: str) -> QueryResult:
        routed = self._handle.options(multiplexed_model_id=key)
        result: QueryResult = await _ask(routed.segment.remote(image, name))
        return result

    async def ready(self) -> bool:
        answer: bool = await _ask(self._handle.ready.remote())
        return answer


class _SupportCache:
    """The co-located engine's support sets: the most recently used ones, from the store."""

    def __init__(self, store: SupportStore) -> None:
        self._store = store
        self._sets: OrderedDict[str, SupportSet] = OrderedDict()

    async def lookup(self, key: str) -> tuple[SupportSet | None, bool]:
        if key in self._sets:
            self._sets.move_to_end(key)
            return self._sets[key], False
        support = await asyncio.to_thread(self._store.load, key)
        if support is not None:
            self._sets[key] = support
            if len(self._sets) > CACHED_CLASSES_PER_REPLICA:
                self._sets.popitem(last=False)
        return support, True


async def _unavailable(request: Request, exc: Exception) -> Response:
    logger.warning("a replica was lost: %s", type(exc).__name__)
    return _error("unavailable", "a replica was lost; retry shortly", retry=True)


for _lost in _LOST:
    api.add_exception_handler(_lost, _unavailable)


def _serve_problem() -> str | None:
    """What Serve reports wrong with this application, or ``None`` when it is running."""
    app_name = serve.get_replica_context().app_name
    application = serve.status().applications.get(app_name)
    if application is None:
        return "the application is not deployed"
    if application.status == "RUNNING":
        return None
    unhealthy = [
        f"{name} is {deployment.status}"
        for name, deployment in application.deployments.items()
        if deployment.status != "HEALTHY"
    ]
    return f"Serve reports the application {application.status}" + (
        f" ({', '.join(unhealthy)})" if unhealthy else ""
    )


@serve.deployment(num_replicas=1)
@serve.ingress(api)
class Ingress:
    """Checks and decodes uploads, keeps the class store, and calls the query heads.

    One replica: every registration and deletion passes through it, so the store needs no
    locking across processes, and a query needs no call but the one to a query head.
    """

    def __init__(
        self,
        options: ServeOptions,
        export_id: str,
        token: str | None,
        query: DeploymentHandle | None,
    ) -> None:
        if is_loopback_host(options.host):
            loopback_replica_listeners()
        self._options = options
        self._store = open_store(options.store, export_id)
        # No query-head deployment: this replica runs the model (see dpnet_serve.app).
        self._queries: _RemoteQueries | QueryEngine = (
            QueryEngine(options, _SupportCache(self._store).lookup)
            if query is None
            else _RemoteQueries(query)
        )
        self._writing = asyncio.Lock()  # store writes run in a thread, one at a time
        self._counts: Counter[str] = Counter()
        self._batch_sizes: Counter[int] = Counter()
        metrics = RequestMetrics(lambda name: self._store.get(name) is not None)
        self._guard = GuardState(AccessPolicy.from_options(options, token), metrics.observe)
        install(self._guard)

    @api.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        """200 while the ingress answers."""
        return {"status": "ok"}

    @api.get("/readyz")
    async def readyz(self) -> Response:
        """200 when Serve reports the application running and a query head answers; 503
        (``not_ready``, or ``draining`` on the way down) otherwise."""
        if self._guard.draining:
            return _error("draining", "the server is shutting down", retry=True)
        problem = await asyncio.to_thread(_serve_problem)
        if problem is None:
            try:
                await asyncio.wait_for(self._queries.ready(), READY_TIMEOUT_S)
            except TimeoutError:
                problem = f"no query head answered within {READY_TIMEOUT_S} s"
            except (*_LOST, ApiError):
                problem = "no query head could answer"
        if problem is not None:
            return _error("not_ready", f"not ready: {problem}", retry=True)
        return JSONResponse({"status": "ready"})

    @api.get("/stats")
    async def stats(self) -> dict[str, Any]:
        """Graph runs, queries, episodes and query batch sizes since start; class count."""
        return {
            "support_graph_runs": self._counts["support_graph_runs"],
            "query_graph_runs": self._counts["query_graph_runs"],
            "queries": self._counts["queries"],
            "episodes": self._counts["episodes"],
            "batch_sizes": {str(size): n for size, n in sorted(self._batch_sizes.items())},
            "classes": len(self._store.classes()),
        }

    @api.get("/classes")
    async def classes(self) -> dict[str, list[dict[str, Any]]]:
        """Every registered class."""
        return {"classes": [info.to_json() for info in self._store.classes()]}

    @api.get("/classes/{name}")
    async def get_class(self, name: ClassName) -> dict[str, Any]:
        """One class; 404 when unknown."""
        return self._class(name).to_json()

    @api.delete("/classes/{name}")
    async def delete_class(self, name: ClassName) -> dict[str, Any]:
        """Remove a class; 404 when unknown, 507 (nothing removed) when the store fails."""
        async with self._writing:
            info = await asyncio.to_thread(self._store.delete, name)
        if info is None:
            raise ClassNotFoundError(f"no class {name!r} is registered")
        return {"deleted": info.to_json()}

    @api.post(
        "/classes/{name}",
        status_code=201,
        description="Encode K support pairs (`images` and `masks` in the same order) once and "
        "store them as class `name`; 409 when the name exists, unless `replace=true`.\n\n"
        + MASKS_DOC,
    )
    async def register(
        self,
        name: ClassName,
        images: Files,
        masks: Files,
        replace: bool = False,
        class_id: ClassId = None,
    ) -> dict[str, Any]:
        """Encode K support pairs once and store them as class ``name``; 409 when the name
        exists, unless ``replace=true``; 507 (nothing stored) when the store fails."""
        self._check_free(name, replace)
        support_images, support_masks = await self._read_support(images, masks, class_id)
        support, runs, encode_ms = await self._queries.encode(support_images, support_masks)
        self._counts["support_graph_runs"] += runs
        info = ClassInfo(
            name=name,
            key=uuid.uuid4().hex,
            shots=support.shots,
            encode_ms=round(encode_ms, 3),
            created=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        async with self._writing:
            self._check_free(name, replace)  # registered by another request meanwhile: 409
            await asyncio.to_thread(self._store.put, info, support)
        return info.to_json()

    @api.post("/classes/{name}/segment", responses=MASK_RESPONSES)
    async def segment(
        self, name: ClassName, image: Annotated[UploadFile, File()], request: Request
    ) -> Response:
        """Segment one image against class ``name``, with its cached support set."""
        pixels = await self._read_image(image, "image")
        for _ in range(3):  # a replaced class: its old key may be gone; a lost replica: retry
            info = self._class(name)
            try:
                result = await self._queries.segment(info.key, pixels, name)
            except _LOST:
                logger.warning("a query head was lost; retrying the query on another")
                continue
            if result.mask is not None:
                self._count_query(result)
                return _mask_response(result.mask, request)
        raise ApiError(
            "unavailable", "the query could not be answered; retry shortly", retry_after_s=1
        )

    @api.post(
        "/episode",
        responses=MASK_RESPONSES,
        description="Segment `image` from K support pairs in one call; nothing is stored.\n\n"
        + MASKS_DOC,
    )
    async def episode(
        self,
        images: Files,
        masks: Files,
        image: Annotated[UploadFile, File()],
        request: Request,
        class_id: ClassId = None,
    ) -> Response:
        """Segment ``image`` from K support pairs in one call; nothing is stored."""
        support_images, support_masks = await self._read_support(images, masks, class_id)
        query = await self._read_image(image, "image")
        mask = await self._queries.episode(support_images, support_masks, query)
        self._counts["episodes"] += 1
        return _mask_response(mask, request)

    async def load(self, key: str) -> SupportSet | None:
        """The support set of a registration key (a query head's cache miss), or ``None``."""
        return await asyncio.to_thread(self._store.load, key)

    async def drain(self) -> None:
        """Start answering 503 ``draining`` to every new request (SIGTERM)."""
        self._guard.draining = True

    async def ongoing(self) -> int:
        """Requests being worked on now (health checks not counted)."""
        return self._guard.ongoing

    def _count_query(self, result: QueryResult) -> None:
        self._counts["queries"] += 1
        if result.leads_batch:
            self._counts["query_graph_runs"] += result.graph_runs
            self._batch_sizes[result.batch_size] += 1

    def _class(self, name: str) -> ClassInfo:
        info = self._store.get(name)
        if info is None:
            raise ClassNotFoundError(f"no class {name!r} is registered")
        return info

    def _check_free(self, name: str, replace: bool) -> None:
        if not replace and self._store.get(name) is not None:
            raise ClassExistsError(
                f"class {name!r} exists; delete it first or register with ?replace=true"
            )

    async def _read_image(self, upload: UploadFile, name: str) -> np.ndarray:
        data = await upload.read(MAX_FILE_BYTES + 1)
        return decode_image(data, name, max_pixels=self._options.max_image_pixels)

    async def _read_support(
        self, images: list[UploadFile], masks: list[UploadFile], class_id: int | None
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        if len(images) != len(masks):
            raise InputError(f"got {len(images)} images but {len(masks)} masks: one mask each")
        if len(images) > self._options.max_shots:
            raise InputError(
                f"too many shots: got {len(images)}, this server accepts at most "
                f"{self._options.max_shots} (dpnet-serve --max-shots)"
            )
        pixels, labels = [], []
        for shot, (image, mask) in enumerate(zip(images, masks, strict=True), start=1):
            pixels.append(await self._read_image(image, f"image {shot}"))
            # Named as Predictor names them, so that every interface gives the same message.
            name, data = f"support mask {shot}", await mask.read(MAX_FILE_BYTES + 1)
            values = decode_mask(
                data, name, max_pixels=self._options.max_image_pixels, class_id=class_id
            )
            labels.append(check_mask(values, name, pixels[-1].shape))
        return pixels, labels
