"""The pip extras of dpnet and the optional packages each installs: the one place that names
them in messages (``pip install 'dpnet[trt]'``).

The extras themselves are defined in ``pyproject.toml``; a test checks that every extra named
here, and every ``extra`` of ``contract.FORMATS``, exists there.
"""

from __future__ import annotations

from typing import Final

__all__ = ["PACKAGE_EXTRAS", "install_command", "missing_package_message"]

PACKAGE_EXTRAS: Final = {
    "torch": "train",
    "torchvision": "train",
    "onnx": "train",
    "onnxscript": "train",
    "matplotlib": "train",
    "tensorrt": "trt",
    "cuda": "trt",
    "onnxruntime-gpu": "gpu",
    "ray": "serve",
    "requests": "serve",
    "tritonclient": "triton",
}
"""Top-level import name (or pip name) of an optional package -> the extra that installs it."""


def install_command(extra: str | None) -> str:
    """The pip command that installs ``extra`` (``None``: the base install).

    >>> install_command("trt"), install_command(None)
    ("pip install 'dpnet[trt]'", 'pip install dpnet')
    """
    return "pip install dpnet" if extra is None else f"pip install 'dpnet[{extra}]'"


def missing_package_message(package: str, needed_by: str) -> str:
    """``<needed_by> needs <package>, which is not installed; install it with pip install ...``.

    Args:
        package: a key of :data:`PACKAGE_EXTRAS`.
        needed_by: what needs it (``dpnet-serve``, ``--plot``, ``backend 'trt'``).

    Raises:
        KeyError: ``package`` is not an optional package of dpnet (a bug).
    """
    return (
        f"{needed_by} needs {package}, which is not installed; install it with "
        f"{install_command(PACKAGE_EXTRAS[package])}"
    )
