"""The HTTP API of dpnet-serve: a FastAPI app served by Ray Serve's ``Ingress`` deployment.

Routes (OpenAPI page at ``/docs``, schema at ``/openapi.json``):

- ``POST /classes/{name}[?replace=true]``: multipart ``images`` and ``masks`` (K of each,
  in the same order; masks read as ``dpnet-segment`` reads mask files,
  :data:`dpnet_runtime.masks.MASK_RULES`), and ``class_id`` for label maps -> 201 and the class.
- ``GET /classes``, ``GET /classes/{name}``, ``DELETE /classes/{name}``.
- ``POST /classes/{name}/segment``: multipart ``image`` -> the mask as a 0/255 PNG, or with
  ``Accept: application/json`` the object pixel count and COCO RLE (:mod:`dpnet_serve.wire`).
- ``POST /episode``: multipart ``images``, ``masks``, ``image`` (and ``class_id``); nothing
  is stored.
- ``GET /healthz`` (the ingress answers), ``GET /readyz`` (every deployment answers),
  ``GET /stats`` (graph-run counters and query batch sizes since start).

Every error is JSON ``{"error": "..."}``: 400 bad image, mask or shot count; 404 unknown
class; 409 the name exists (register with ``?replace=true``); 413 file or image too large;
422 malformed request (missing field, bad class name); 500 a server-side failure; 503 not
ready. The server keeps serving after any of them.
"""

import asyncio
import logging
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Final

import numpy as np
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi import Path as UrlPath
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException

from dpnet_runtime import __version__
from dpnet_runtime.errors import DpnetError, InputError
from dpnet_runtime.masks import mask_rules_markdown
from dpnet_runtime.preprocess import check_mask
from dpnet_serve.options import ServeOptions
from dpnet_serve.store import ClassInfo
from dpnet_serve.wire import (
    MAX_FILE_BYTES,
    OversizedImageError,
    decode_image,
    decode_mask,
    mask_to_png,
    mask_to_rle,
)

__all__ = ["ClassExistsError", "ClassNotFoundError", "Ingress", "api"]

NAME_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
READY_TIMEOUT_S: Final = 5.0

logger = logging.getLogger(__name__)

api = FastAPI(
    title="dpnet-serve",
    version=__version__,
    description="Few-shot segmentation with DPNet: register a class once from 1 to a few "
    "annotated images, then segment any number of images against it.",
)

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


class ClassNotFoundError(InputError):
    """No class of that name is registered (HTTP 404)."""


class ClassExistsError(InputError):
    """A class of that name exists and the request did not ask to replace it (HTTP 409)."""


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


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": " ".join(message.split())}, status_code=status)


# Most specific first: the first matching type gives the status.
_STATUS: Final = (
    (OversizedImageError, 413),
    (ClassNotFoundError, 404),
    (ClassExistsError, 409),
    (InputError, 400),
)


@api.exception_handler(DpnetError)
async def _dpnet_error(request: Request, exc: DpnetError) -> JSONResponse:
    # An error raised in another replica arrives as RayTaskError(<type>); .cause is the original.
    cause = getattr(exc, "cause", None) or exc
    status = next((code for kind, code in _STATUS if isinstance(cause, kind)), 500)
    return _error(status, str(cause))


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    problems = "; ".join(
        f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}" for error in exc.errors()
    )
    return _error(422, f"malformed request: {problems}")


@api.exception_handler(HTTPException)
async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    return _error(exc.status_code, str(exc.detail))


@api.exception_handler(Exception)
async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("internal error on %s %s", request.method, request.url.path)
    return _error(500, f"internal error: {type(exc).__name__}: {exc}")


# One replica: every registration and deletion passes through it, so its cache of class keys
# stays exact without asking the registry on every query.
@serve.deployment(num_replicas=1, max_ongoing_requests=256, ray_actor_options={"num_cpus": 0})
@serve.ingress(api)
class Ingress:
    """Decodes and checks uploads, then calls the registry, the encoder and the query heads."""

    def __init__(
        self,
        options: ServeOptions,
        registry: DeploymentHandle,
        encoder: DeploymentHandle,
        query: DeploymentHandle,
    ) -> None:
        self._options = options
        self._registry = registry
        self._encoder = encoder
        self._query = query
        self._keys: dict[str, ClassInfo] = {}  # class name -> its registration, for queries

    @api.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        """200 while the ingress answers."""
        return {"status": "ok"}

    @api.get("/readyz")
    async def readyz(self) -> JSONResponse:
        """200 when the registry, the encoder and a query head answer; 503 otherwise."""
        calls = (self._registry.stats.remote(), self._encoder.ready.remote())
        try:
            await asyncio.wait_for(
                asyncio.gather(*calls, self._query.ready.remote()), READY_TIMEOUT_S
            )
        except TimeoutError:
            return _error(503, f"not ready: a deployment did not answer in {READY_TIMEOUT_S} s")
        return JSONResponse({"status": "ready"})

    @api.get("/stats")
    async def stats(self) -> dict[str, Any]:
        """Graph runs, queries, episodes and query batch sizes since start; class count."""
        stats: dict[str, Any] = await self._registry.stats.remote()
        return stats

    @api.get("/classes")
    async def classes(self) -> dict[str, list[dict[str, Any]]]:
        """Every registered class."""
        infos: list[ClassInfo] = await self._registry.classes.remote()
        return {"classes": [info.to_json() for info in infos]}

    @api.get("/classes/{name}")
    async def get_class(self, name: ClassName) -> dict[str, Any]:
        """One class; 404 when unknown."""
        return (await self._class(name)).to_json()

    @api.delete("/classes/{name}")
    async def delete_class(self, name: ClassName) -> dict[str, Any]:
        """Remove a class; 404 when unknown."""
        info: ClassInfo | None = await self._registry.delete.remote(name)
        self._keys.pop(name, None)
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
        """Encode K support pairs once and store them as class ``name``."""
        if not replace:
            await self._check_free(name)
        support_images, support_masks = await self._read_support(images, masks, class_id)
        support, encode_ms = await self._encoder.encode.remote(support_images, support_masks)
        info = ClassInfo(
            name=name,
            key=uuid.uuid4().hex,
            shots=support.shots,
            encode_ms=round(encode_ms, 3),
            created=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        if not await self._registry.add.remote(info, support, replace):
            await self._check_free(name)  # registered by another request meanwhile: 409
        self._keys[name] = info
        return info.to_json()

    @api.post("/classes/{name}/segment", responses=MASK_RESPONSES)
    async def segment(
        self, name: ClassName, image: Annotated[UploadFile, File()], request: Request
    ) -> Response:
        """Segment one image against class ``name``, with its cached support set."""
        info = self._keys.get(name) or await self._class(name)
        self._keys[name] = info
        pixels = await self._read_image(image, "image")
        handle = self._query.options(multiplexed_model_id=info.key)
        mask: np.ndarray | None = await handle.segment.remote(pixels)
        if mask is None:  # the registry lost it (a memory store whose replica restarted)
            self._keys.pop(name, None)
            raise ClassNotFoundError(f"class {name!r} is no longer registered")
        return _mask_response(mask, request)

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
        mask = await self._encoder.episode.remote(support_images, support_masks, query)
        return _mask_response(mask, request)

    async def _class(self, name: str) -> ClassInfo:
        info: ClassInfo | None = await self._registry.get.remote(name)
        if info is None:
            raise ClassNotFoundError(f"no class {name!r} is registered")
        return info

    async def _check_free(self, name: str) -> None:
        if await self._registry.get.remote(name) is not None:
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
