"""The Python-backend BLS model of the Triton repository (``dpnet/1/model.py``).

``dpnet-export triton`` copies this file into the repository; it runs inside Triton's Python
backend, never in dpnet. One request carries ``class_name`` plus either the support tensors
(``support_images [K,3,S,S]``, ``support_masks [K,S,S]``: register the class: the support
graph runs once and its outputs are cached in this model instance's memory; answers
``shots``) or ``query_image [3,S,S]`` (segment it with the class's cached tensors through
the query graph; answers the query graph's outputs without the batch axis, and ``shots``).
Inputs are the graphs' own pre-processed tensors (see docs/runtime.md, "I/O contract"); the tensor
and model names come from the ``parameters`` of ``config.pbtxt``, written from the contract.
Requests run concurrently (``async_exec``), so Triton's dynamic batcher batches the query
graph's calls. The class cache lives as long as the model instance.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Final

import numpy as np

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # dpnet-export imports this file for its parameter names, outside Triton
    pb_utils = None

__all__ = [
    "CACHE_NAMES",
    "QUERY_INPUT",
    "QUERY_MODEL",
    "QUERY_OUTPUTS",
    "SUPPORT_INPUTS",
    "SUPPORT_MODEL",
    "TritonPythonModel",
]

# Keys of the parameters in config.pbtxt.
SUPPORT_MODEL: Final = "support_model"
QUERY_MODEL: Final = "query_model"
SUPPORT_INPUTS: Final = "support_inputs"
CACHE_NAMES: Final = "cache_names"
QUERY_INPUT: Final = "query_input"
QUERY_OUTPUTS: Final = "query_outputs"
_CLASS_NAME: Final = "class_name"
_SHOTS: Final = "shots"


class _RequestError(Exception):
    """A request this model answers with an error (unknown class, missing inputs)."""


class TritonPythonModel:
    """Registers classes from support tensors and segments queries against their cache."""

    def initialize(self, args: dict[str, Any]) -> None:
        parameters = json.loads(args["model_config"])["parameters"]
        self._names = {key: value["string_value"] for key, value in parameters.items()}
        self._classes: dict[str, tuple[int, dict[str, np.ndarray]]] = {}

    async def execute(self, requests: list[Any]) -> list[Any]:
        return list(await asyncio.gather(*(self._answer(request) for request in requests)))

    async def _answer(self, request: Any) -> Any:
        try:
            name = _input(request, _CLASS_NAME)
            if name is None:
                raise _RequestError("class_name is missing")
            class_name = name.reshape(-1)[0].decode()
            given = {key: _input(request, key) for key in self._list(SUPPORT_INPUTS)}
            support = {key: value for key, value in given.items() if value is not None}
            query = _input(request, self._names[QUERY_INPUT])
            if len(support) == len(given):
                return await self._register(class_name, support)
            if query is not None:
                return await self._segment(class_name, query)
            raise _RequestError(
                f"give {' and '.join(given)} to register, or {self._names[QUERY_INPUT]}"
            )
        except _RequestError as exc:
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc)))

    async def _register(self, name: str, support: dict[str, np.ndarray]) -> Any:
        feed = {key: value[None] for key, value in support.items()}  # one episode: B = 1
        cache = await self._call(self._names[SUPPORT_MODEL], feed, self._list(CACHE_NAMES))
        shots = int(next(iter(support.values())).shape[0])
        self._classes[name] = (shots, cache)
        return pb_utils.InferenceResponse(output_tensors=[_shots(shots)])

    async def _segment(self, name: str, query: np.ndarray) -> Any:
        if name not in self._classes:
            raise _RequestError(f"no class {name!r} is registered")
        shots, cache = self._classes[name]
        feed = {self._names[QUERY_INPUT]: query[None], **cache}
        outputs = await self._call(self._names[QUERY_MODEL], feed, self._list(QUERY_OUTPUTS))
        tensors = [pb_utils.Tensor(key, value[0].reshape(value.shape[1:] or (1,)))
                   for key, value in outputs.items()]  # fmt: skip
        return pb_utils.InferenceResponse(output_tensors=[*tensors, _shots(shots)])

    async def _call(
        self, model: str, feed: dict[str, np.ndarray], outputs: list[str]
    ) -> dict[str, np.ndarray]:
        request = pb_utils.InferenceRequest(
            model_name=model,
            requested_output_names=outputs,
            inputs=[
                pb_utils.Tensor(key, np.ascontiguousarray(value)) for key, value in feed.items()
            ],
        )
        response = await request.async_exec()
        if response.has_error():
            raise _RequestError(f"{model}: {response.error().message()}")
        return {
            key: pb_utils.get_output_tensor_by_name(response, key).as_numpy() for key in outputs
        }

    def _list(self, key: str) -> list[str]:
        return self._names[key].split(",")


def _input(request: Any, name: str) -> np.ndarray | None:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


def _shots(shots: int) -> Any:
    return pb_utils.Tensor(_SHOTS, np.array([shots], dtype=np.int32))
