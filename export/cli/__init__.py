"""dpnet-export: ``onnx``, ``trt``, ``check`` and ``triton`` subcommands, one module each.

Each subcommand module defines ``command`` and imports its heavy dependencies (torch,
TensorRT) inside it, so ``dpnet-export --help`` works with none of them installed.
"""

from __future__ import annotations

from dpnet_export.cli import check_cmd, onnx_cmd, triton_cmd, trt_cmd
from dpnet_runtime.console import make_app, run_app

__all__ = ["app", "main"]

app = make_app(
    name="dpnet-export",
    help="Export a DPNet checkpoint to ONNX, lint ONNX for TensorRT, build TensorRT engines, "
    "write a Triton model repository.",
)
app.command("onnx")(onnx_cmd.command)
app.command("trt")(trt_cmd.command)
app.command("check")(check_cmd.command)
app.command("triton")(triton_cmd.command)


def main() -> None:
    """Console-script entry point."""
    run_app(app)
