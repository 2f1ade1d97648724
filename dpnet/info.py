"""``dpnet-info``: parameter counts of the presets next to the paper's 19.3M.

Our ``paper`` config has 19.00M parameters (8.54M in the frozen ResNet-50 conv1..layer3,
10.46M trainable), 1.6 % below the paper's 19.3M (Table 1), which the paper does not break down.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from rich.table import Table

from dpnet.config import PRESETS, preset
from dpnet.model.dpnet import build_dpnet, count_parameters
from dpnet_runtime.console import make_app, run_app, stdout_console

__all__ = ["PAPER_PARAMETERS", "ParameterCount", "app", "main", "parameter_counts"]

PAPER_PARAMETERS: Final = 19_300_000
"""Parameters the paper reports for DPNet (Table 1)."""


@dataclass(frozen=True)
class ParameterCount:
    """Parameters of one preset."""

    config: str
    total: int
    trainable: int
    input_size: int


def parameter_counts() -> tuple[ParameterCount, ...]:
    """Total and trainable parameters of every preset (random weights, nothing is loaded).

    >>> {count.config for count in parameter_counts()} == {"tiny", "paper"}
    True
    """
    counts = []
    for name in sorted(PRESETS, key=lambda key: key != "tiny"):
        config = preset(name)
        total, trainable = count_parameters(build_dpnet(config, pretrained_backbone=False))
        counts.append(ParameterCount(name, total, trainable, config.input_size))
    return tuple(counts)


app = make_app(
    name="dpnet-info",
    help="Parameter counts of the DPNet presets.",
)


@app.command()
def command() -> None:
    """Print total and trainable parameters of the tiny and paper configs vs the paper's 19.3M."""
    table = Table(title="DPNet parameters (paper: 19.3M)")
    table.add_column("config")
    table.add_column("input", justify="right")
    table.add_column("total", justify="right")
    table.add_column("trainable", justify="right")
    table.add_column("total / paper", justify="right")
    for count in parameter_counts():
        table.add_row(
            count.config,
            f"{count.input_size} x {count.input_size}",
            f"{count.total / 1e6:.2f}M",
            f"{count.trainable / 1e6:.2f}M",
            f"{count.total / PAPER_PARAMETERS:.3f}",
        )
    stdout_console.print(table)


def main() -> None:
    """Console-script entry point."""
    run_app(app)
