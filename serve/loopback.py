"""A Serve replica's own listener on the loopback interface, for a server of this machine only.

Ray-free at import (Ray is imported when the function runs, inside a replica).
"""

from __future__ import annotations

from typing import Any

__all__ = ["loopback_replica_listeners"]


def loopback_replica_listeners() -> None:
    """Make this replica's own listener bind 127.0.0.1, not every interface.

    Ray Serve 2.60 starts an inter-deployment gRPC server in every replica bound to ``[::]:0``
    with no setting to change it (ray-project/ray#64544), once the replica's constructor has
    run. The dpnet deployments call this from their constructors when they serve a loopback
    host, however they were deployed (``dpnet-serve``, ``serve run``, ``serve deploy``).
    Serve sends nothing through that server unless its gRPC transport is switched on
    (``RAY_SERVE_USE_GRPC_BY_DEFAULT``). Should Ray rename the function, the server still runs
    and the loopback tests fail.
    """
    from ray.serve._private import replica

    bind = getattr(replica, "add_port_to_grpc_server", None)
    if bind is None or getattr(bind, "__name__", "") == "bind_loopback":
        return

    def bind_loopback(server: Any, address: str) -> int:
        port: int = bind(server, address.replace("[::]:", "127.0.0.1:"))
        return port

    replica.add_port_to_grpc_server = bind_loopback
