"""DPNetConfig: the frozen model configuration, its presets and the ablation switches.

Two presets:

* ``paper``: the network of the paper: ResNet-50 trunk (3, 4, 6 bottlenecks in layer1..3),
  256 feature channels, 321 x 321 input, ASPP rates 6/12/18 and CANet's two residual
  refinement blocks in each decoder.
* ``tiny``: the same architecture, one bottleneck per trunk stage, 64 feature channels and a
  129 x 129 input, for tests and the CPU demo.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, get_args

from dpnet_runtime.errors import InputError, OptionError

__all__ = [
    "PRESETS",
    "DPNetConfig",
    "PseudoPrototype",
    "check_beta",
    "config_from_dict",
    "preset",
]

PseudoPrototype = Literal["none", "global", "cosine", "ccm"]


def check_beta(beta: float, name: str = "beta") -> None:
    """A discriminator threshold lies in [0, 1]: it is compared with a sigmoid's output.

    Args:
        beta: the threshold.
        name: what the caller calls it (a config field or a CLI flag), quoted in the error.

    Raises:
        InputError: ``beta`` outside [0, 1] (or NaN).
    """
    if not 0.0 <= beta <= 1.0:
        raise OptionError(f"{name} must lie in [0, 1], got {beta}")


@dataclass(frozen=True)
class DPNetConfig:
    """Everything that defines a DPNet, stored in checkpoints and ONNX metadata.

    Args:
        name: preset the config came from (informational).
        input_size: side H = W of the square network input (321 PASCAL, 641 COCO).
        backbone_layers: bottleneck blocks in ResNet layer1..layer3 ((3, 4, 6) is ResNet-50).
        feature_channels: C, channels of the reduced query/support feature and prototypes.
        dropout: dropout after the 256-d reduction (CANet).
        discriminator_hidden: width of the CCM discriminator's first FC layer.
        pim_reduction: PIM's FC1 maps C to C // pim_reduction.
        aspp_rates: dilation rates of the ASPP's 3 x 3 branches.
        refine_blocks: CANet residual 3 x 3 blocks after the ASPP in each decoder.
        pim_alpha_init: initial value of PIM's learnable scale a.
        use_pim: ablation switch, prototype interaction module (Table 3).
        use_msf: ablation switch, multi-scale fusion (Table 3); off = scale 1 only.
        pseudo_prototype: how P_q is made (Table 4): ``none`` (P_q = P), ``global`` (mean
            query feature), ``cosine`` (query positions most similar to support foreground),
            ``ccm`` (cycle comparison + discriminator, the paper's method).
        beta_train: discriminator threshold during training (paper: 0.5).
        beta_test: discriminator threshold at evaluation and export (paper: 0.2).
        aux_weight: lambda_1 of Eq. 11.
        dis_weight: lambda_2 of Eq. 11.
    """

    name: str = "paper"
    input_size: int = 321
    backbone_layers: tuple[int, int, int] = (3, 4, 6)
    feature_channels: int = 256
    dropout: float = 0.5
    discriminator_hidden: int = 256
    pim_reduction: int = 4
    aspp_rates: tuple[int, ...] = (6, 12, 18)
    refine_blocks: int = 2
    pim_alpha_init: float = 0.1
    use_pim: bool = True
    use_msf: bool = True
    pseudo_prototype: PseudoPrototype = "ccm"
    beta_train: float = 0.5
    beta_test: float = 0.2
    aux_weight: float = 1.0
    dis_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.input_size < 33:
            raise InputError(f"input_size must be at least 33 pixels, got {self.input_size}")
        if len(self.backbone_layers) != 3 or min(self.backbone_layers) < 1:
            raise InputError(
                f"backbone_layers must be 3 positive block counts, got {self.backbone_layers}"
            )
        if self.pseudo_prototype not in get_args(PseudoPrototype):
            raise InputError(
                f"pseudo_prototype must be one of {get_args(PseudoPrototype)}, "
                f"got {self.pseudo_prototype!r}"
            )
        check_beta(self.beta_train, "beta_train")
        check_beta(self.beta_test, "beta_test")
        if self.feature_channels % self.pim_reduction:
            raise InputError(
                f"feature_channels ({self.feature_channels}) must be divisible by "
                f"pim_reduction ({self.pim_reduction})"
            )

    def replace(self, **changes: Any) -> DPNetConfig:
        """A copy with ``changes`` applied (validated like the constructor)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict (tuples become lists)."""
        return {
            key: list(v) if isinstance(v, tuple) else v
            for key, v in dataclasses.asdict(self).items()
        }


PRESETS: dict[str, DPNetConfig] = {
    "paper": DPNetConfig(),
    "tiny": DPNetConfig(
        name="tiny",
        input_size=129,
        backbone_layers=(1, 1, 1),
        feature_channels=64,
        discriminator_hidden=64,
        aspp_rates=(2, 4, 6),
        refine_blocks=1,
    ),
}


def preset(name: str, **overrides: Any) -> DPNetConfig:
    """The preset ``name`` (``paper`` or ``tiny``) with optional field overrides.

    Raises:
        InputError: unknown preset or field.
    """
    if name not in PRESETS:
        raise OptionError(f"unknown config {name!r}; choose one of {sorted(PRESETS)}")
    return config_from_dict({**PRESETS[name].to_dict(), **overrides})


def config_from_dict(values: dict[str, Any]) -> DPNetConfig:
    """Rebuild a config from :meth:`DPNetConfig.to_dict` output (checkpoint, ONNX metadata).

    Raises:
        InputError: unknown keys or invalid values.
    """
    fields = {field.name for field in dataclasses.fields(DPNetConfig)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise InputError(f"unknown DPNetConfig fields {unknown}; known: {sorted(fields)}")
    converted: dict[str, Any] = {
        key: tuple(value) if isinstance(value, list) else value for key, value in values.items()
    }
    return DPNetConfig(**converted)
