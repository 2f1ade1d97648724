"""``python -m dpnet_runtime``: the dpnet-segment command."""

from dpnet_runtime.cli import main

main()
