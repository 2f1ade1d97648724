"""What a training run can set, and the defaults per dataset and ablation variant.

Optimiser (paper section 5.1, following CANet): SGD, momentum 0.9, weight decay 5e-4, a fixed
learning rate. Defaults per dataset (:data:`DATASET_DEFAULTS`): PASCAL-5i SGD lr 0.0025,
batch 4, 200 epochs; COCO-20i SGD lr 0.005, batch 8, 20 epochs (the paper); a folder of your
own: PASCAL's settings for 2000 steps (paper preset, 321 x 321). Synthetic: AdamW
lr 1e-3, batch 4, 1500 steps. Why not SGD there: the tiny config's trunk is random (no ImageNet
weights exist for it), its features are small (mean |x| about 0.04), and with 5 % foreground
SGD sits on the all-background solution: measured on this machine, SGD at lr 0.02, 0.05, 0.2
and 0.5 still predicted no foreground after 200-250 steps (validation mIoU 0), and could not
even overfit 4 fixed episodes in 150 steps, which AdamW at 1e-3 does in 75.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, get_args

from dpnet.config import DPNetConfig, preset
from dpnet.data import DatasetOptions
from dpnet_runtime.errors import InputError, OptionError

__all__ = [
    "ABLATION_VARIANTS",
    "DATASET_DEFAULTS",
    "VAL_SEED",
    "DatasetDefaults",
    "Optimizer",
    "TrainOptions",
    "init_config",
    "train_config",
    "variant_config",
]

ABLATION_VARIANTS: Final[dict[str, dict[str, Any]]] = {
    # Table 3, step by step: nothing, +PIM, +PIM+MSF (= Table 4's baseline), +CCM.
    "baseline": {"use_pim": False, "use_msf": False, "pseudo_prototype": "none"},
    "pim": {"use_pim": True, "use_msf": False, "pseudo_prototype": "none"},
    "none": {"use_pim": True, "use_msf": True, "pseudo_prototype": "none"},
    # Table 4: how the pseudo-prototype is made, with PIM and MSF on.
    "global": {"use_pim": True, "use_msf": True, "pseudo_prototype": "global"},
    "cosine": {"use_pim": True, "use_msf": True, "pseudo_prototype": "cosine"},
    "ccm": {"use_pim": True, "use_msf": True, "pseudo_prototype": "ccm"},
}
"""Config overrides of the paper's ablation variants; ``ccm`` is DPNet itself."""

Optimizer = Literal["sgd", "adamw"]

VAL_SEED: Final = 1
"""Episode seed of validation during training (``dpnet-eval`` defaults to seed 0)."""


@dataclass(frozen=True)
class DatasetDefaults:
    """Model preset, input size, optimiser and length of a training run on one dataset."""

    config: str
    input_size: int | None
    optimizer: Optimizer
    lr: float
    batch_size: int
    epochs: int | None
    steps: int | None
    val_every: int


DATASET_DEFAULTS: Final[dict[str, DatasetDefaults]] = {
    "pascal": DatasetDefaults(
        "paper", 321, "sgd", 0.0025, batch_size=4, epochs=200, steps=None, val_every=2000
    ),
    "coco": DatasetDefaults(
        "paper", 641, "sgd", 0.005, batch_size=8, epochs=20, steps=None, val_every=5000
    ),
    "synthetic": DatasetDefaults(
        "tiny", None, "adamw", 1e-3, batch_size=4, epochs=None, steps=1500, val_every=250
    ),
    "folder": DatasetDefaults(
        "paper", 321, "sgd", 0.0025, batch_size=4, epochs=None, steps=2000, val_every=500
    ),
}


@dataclass(frozen=True)
class TrainOptions:
    """Everything ``dpnet-train`` can set; ``None`` means the dataset's default.

    Args:
        out: run folder for ``last.pt`` and ``best.pt`` (created if missing).
        dataset: ``synthetic``, ``pascal``, ``coco`` or ``folder``.
        data_root: dataset folder (not needed by ``synthetic``).
        data_options: dataset-specific options (COCO split, episode lists, folder classes).
        fold: test fold 0..3 (training uses the other folds' classes).
        shots: K supports per training episode.
        config: preset name, ``tiny`` or ``paper``; ``None``: ``paper`` for PASCAL-5i (321 x 321)
            and COCO-20i (641 x 641), ``tiny`` for the synthetic benchmark.
        variant: ablation variant, a key of :data:`ABLATION_VARIANTS` (``ccm`` = DPNet).
        steps: optimisation steps; overrides ``epochs``.
        epochs: passes over the training episodes (``len(dataset) / (batch * ranks)`` steps).
        batch_size: episodes per step and rank.
        optimizer: ``sgd`` (the paper's) or ``adamw``.
        lr: learning rate (fixed, as the paper).
        momentum: SGD momentum (ignored by AdamW).
        weight_decay: weight decay (AdamW: decoupled).
        backbone_weights: torchvision ``resnet50-*.pth`` for the trunk.
        pretrained_backbone: ``False`` keeps the trunk random without the warning's search.
        resume: continue from ``out/last.pt``.
        init: start a new run from this checkpoint's weights (fine-tuning) with a fresh
            optimiser; its network is the run's (``config`` and ``variant`` must match it).
        seed: run seed (model init, augmentation, dropout).
        val_every: validate (and write ``last.pt``) every this many steps; 0 = only at the end.
        val_episodes: validation episodes (fold classes, seed :data:`VAL_SEED`); 0 = none.
        log_every: steps averaged into one :class:`LossRecord`.
        device: ``auto``, ``cpu`` or ``cuda``.
        threads: torch intra-op threads for this process (``None`` leaves torch's default).
        time_limit_s: stop (cleanly, with checkpoints) after this many seconds of training.
    """

    out: Path
    dataset: str = "synthetic"
    data_root: Path | None = None
    data_options: DatasetOptions = field(default_factory=DatasetOptions)
    fold: int = 0
    shots: int = 1
    config: str | None = None
    variant: str = "ccm"
    steps: int | None = None
    epochs: int | None = None
    batch_size: int | None = None
    optimizer: Optimizer | None = None
    lr: float | None = None
    momentum: float = 0.9
    weight_decay: float = 5e-4
    backbone_weights: Path | None = None
    pretrained_backbone: bool = True
    resume: bool = False
    init: Path | None = None
    seed: int = 0
    val_every: int | None = None
    val_episodes: int = 100
    log_every: int = 10
    device: str = "auto"
    threads: int | None = None
    time_limit_s: float | None = None

    def __post_init__(self) -> None:
        if self.dataset not in DATASET_DEFAULTS:
            raise OptionError(
                f"unknown dataset {self.dataset!r}; choose one of {', '.join(DATASET_DEFAULTS)}"
            )
        if self.variant not in ABLATION_VARIANTS:
            raise OptionError(
                f"unknown ablation variant {self.variant!r}; "
                f"choose one of {', '.join(ABLATION_VARIANTS)}"
            )
        for name in ("steps", "epochs", "batch_size", "threads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise OptionError(f"{name.replace('_', '-')} must be at least 1, got {value}")
        if self.optimizer not in (None, *get_args(Optimizer)):
            raise OptionError(f"optimizer must be sgd or adamw, got {self.optimizer!r}")
        if self.lr is not None and self.lr <= 0:
            raise OptionError(f"lr must be positive, got {self.lr}")
        if self.val_episodes < 0 or (self.val_every is not None and self.val_every < 0):
            raise OptionError("val-every and val-episodes must not be negative")
        if self.log_every < 1:
            raise OptionError(f"log-every must be at least 1, got {self.log_every}")
        self.data_options.keywords(self.dataset)  # refuses options of another dataset now


def variant_config(config: str, variant: str, **overrides: Any) -> DPNetConfig:
    """The preset ``config`` with the switches of ablation ``variant`` (and ``overrides``)."""
    if variant not in ABLATION_VARIANTS:
        raise OptionError(
            f"unknown ablation variant {variant!r}; choose one of {list(ABLATION_VARIANTS)}"
        )
    return preset(config, **ABLATION_VARIANTS[variant], **overrides)


def train_config(options: TrainOptions) -> DPNetConfig:
    """The network a run trains: the chosen (or the dataset's default) preset and variant.

    >>> train_config(TrainOptions(out=Path("run"), dataset="coco")).input_size
    641
    """
    defaults = DATASET_DEFAULTS[options.dataset]
    # The dataset's input size applies only to its default preset, not to a chosen one.
    use_defaults = options.config is None and defaults.input_size is not None
    size = {"input_size": defaults.input_size} if use_defaults else {}
    return variant_config(options.config or defaults.config, options.variant, **size)


def init_config(options: TrainOptions, checkpoint: DPNetConfig, path: Path) -> DPNetConfig:
    """The network of a run that starts from the weights of checkpoint ``path`` (``--init``).

    It is the checkpoint's network. Without ``config`` the run takes it (with the switches of
    ``variant``, which must be the checkpoint's); a chosen ``config`` must give the same one.

    Raises:
        InputError: the options ask for another network than the checkpoint holds (the
            message names the fields that differ).
    """
    if options.config is None:
        wanted = checkpoint.replace(**ABLATION_VARIANTS[options.variant])
    else:
        wanted = train_config(options)
    if wanted != checkpoint:
        ours, theirs = wanted.to_dict(), checkpoint.to_dict()
        differ = [key for key in ours if ours[key] != theirs[key]]
        raise InputError(
            f"--init {path} holds a {checkpoint.name} network that differs from the one this "
            f"run asks for in {', '.join(differ)}; drop --preset / --ablation-variant or give "
            "the checkpoint's"
        )
    return checkpoint
