"""dpnet_serve: few-shot segmentation as a service on Ray Serve (the ``serve`` extra).

>>> from dpnet_serve import Client  # doctest: +SKIP
>>> client = Client("http://127.0.0.1:8000")  # doctest: +SKIP
>>> client.register("cat", [image], [mask])  # doctest: +SKIP
>>> mask = client.segment("cat", query)  # uint8 [H, W], 1 = object  # doctest: +SKIP

Importing this package needs neither Ray nor FastAPI; ``dpnet-serve`` does.
"""

from __future__ import annotations

from dpnet_serve.client import Client
from dpnet_serve.options import ServeOptions
from dpnet_serve.store import ClassInfo

__all__ = ["ClassInfo", "Client", "ServeOptions"]
