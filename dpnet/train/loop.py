"""Episodic training of DPNet: optimiser, periodic validation, checkpoints and resume.

Only the reduction, CCM discriminator, PIM, MSF and decoders train (the backbone trunk is
frozen); the optimiser and its defaults per dataset are in :mod:`dpnet.train.options`.

Determinism: the model is initialised after ``torch.manual_seed(seed)``; step ``s`` of rank
``r`` draws its augmentation from ``numpy.random.Generator(PCG64([seed, s, r]))`` and seeds
torch's generator (dropout) from the same triple. All randomness is thus a function of
(seed, step, rank), so a resumed run continues bit for bit as an uninterrupted one would, and
the training state holds no RNG snapshot (only step, optimiser state, best metric, history).

Checkpoints (rank 0 only, atomically): ``last.pt`` at every validation and at the end,
``best.pt`` whenever the validation mIoU (pfenet protocol) improves. ``resume`` continues from
``last.pt``; a fresh run refuses an ``out`` folder that already holds one.

Fine-tuning (``init``): a new run whose weights, all of them (trunk included), come from
another checkpoint, with a fresh optimiser, step 0 and no history; the network is the
checkpoint's (:func:`~dpnet.train.options.init_config`). The checkpoints of the run record it
in ``meta["init"]`` (path, sha256, and the dataset and fold it was trained on).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dpnet.checkpoint import load_checkpoint, load_model, make_meta, save_checkpoint
from dpnet.config import DPNetConfig
from dpnet.data import FewShotDataset, build_dataset
from dpnet.data.transforms import EpisodeTensors, collate, episode_to_tensors
from dpnet.eval.evaluate import EvalResult, evaluate
from dpnet.model.dpnet import DPNet, SegmentOutput, build_dpnet
from dpnet.model.losses import DPNetLosses, dpnet_losses
from dpnet.train.distributed import (
    DistributedContext,
    any_rank,
    setup_distributed,
    shard_episode_indices,
    synchronize,
    teardown_distributed,
    wrap_model,
)
from dpnet.train.options import (
    DATASET_DEFAULTS,
    VAL_SEED,
    DatasetDefaults,
    Optimizer,
    TrainOptions,
    init_config,
    train_config,
)
from dpnet_runtime.errors import InputError
from dpnet_runtime.fileio import sha256_file
from dpnet_runtime.outputs import refuse_inputs

__all__ = [
    "LossRecord",
    "TrainProgress",
    "TrainResult",
    "ValidationRecord",
    "train",
    "weights_sha256",
]


@dataclass(frozen=True)
class LossRecord:
    """Loss terms (Eq. 11) averaged over the ``log_every`` steps that end at ``step``."""

    step: int
    total: float
    seg: float
    aux: float
    dis: float


@dataclass(frozen=True)
class ValidationRecord:
    """Validation metrics (percent) after ``step`` completed steps."""

    step: int
    miou_canet: float
    miou_pfenet: float
    fbiou: float


@dataclass(frozen=True)
class TrainProgress:
    """What the progress callback gets after every step (rank 0 only)."""

    step: int
    total_steps: int
    losses: LossRecord
    validation: ValidationRecord | None


@dataclass(frozen=True)
class TrainResult:
    """Outcome of :func:`train`.

    Attributes:
        out: the run folder.
        last_checkpoint: ``out/last.pt``.
        best_checkpoint: ``out/best.pt``, or ``None`` without validation.
        config: the trained network's config.
        start_step: steps already done when this call began (non-zero after resume).
        steps: steps completed in total.
        total_steps: steps planned.
        lr: learning rate used; batch_size: episodes per step and rank.
        losses: loss history (including the part before a resume).
        validations: validation history.
        seconds: wall time of this call's training steps.
        steps_per_second: this call's steps over ``seconds``.
        world_size: number of DDP processes.
        rank: this process's rank (0 wrote the checkpoints).
        weights_sha256: sha256 of this rank's final weights (:func:`weights_sha256`); equal on
            every DDP rank, and equal between runs with the same options and seed.
    """

    out: Path
    last_checkpoint: Path
    best_checkpoint: Path | None
    config: DPNetConfig
    start_step: int
    steps: int
    total_steps: int
    lr: float
    batch_size: int
    losses: tuple[LossRecord, ...]
    validations: tuple[ValidationRecord, ...]
    seconds: float
    steps_per_second: float
    world_size: int
    rank: int
    weights_sha256: str


TrainProgressCallback = Callable[[TrainProgress], None]


def train(options: TrainOptions, progress: TrainProgressCallback | None = None) -> TrainResult:
    """Train DPNet episodically; under torchrun, one DDP rank of the job.

    Args:
        options: see :class:`TrainOptions`.
        progress: optional callback, called on rank 0 after every step.

    Returns:
        The run's :class:`TrainResult` (every rank returns one; only rank 0 wrote files).

    Raises:
        InputError: bad options, ``out`` is or lies inside an input (the dataset root, the
            ``init`` checkpoint...), or ``out`` holds a run and ``resume`` is off (or the run
            in ``out`` was made with another config).
        DatasetError: the dataset cannot be read.
        ModelFileError: ``resume`` without a readable ``out/last.pt``; bad backbone weights.

    >>> from pathlib import Path
    >>> import tempfile
    >>> result = train(TrainOptions(out=Path(tempfile.mkdtemp()), steps=2, val_episodes=0))
    >>> result.steps
    2
    """
    out = Path(options.out)
    refuse_inputs(  # before any slow work
        {"--out": [out, out / "last.pt", out / "best.pt"]},
        {"--init": [options.init], "--backbone-weights": [options.backbone_weights]},
        trees={"--data-root": [options.data_root]},
    )
    context = setup_distributed(options.device)
    try:
        return _Trainer(options, context).run(progress)
    finally:
        teardown_distributed(context)


class _Trainer:
    """State of one training run; :meth:`run` is the loop."""

    def __init__(self, options: TrainOptions, context: DistributedContext) -> None:
        if options.threads is not None:
            torch.set_num_threads(options.threads)
        self.options = options
        self.context = context
        defaults = DATASET_DEFAULTS[options.dataset]
        self.lr = options.lr if options.lr is not None else defaults.lr
        self.batch_size = options.batch_size or defaults.batch_size
        self.val_every = options.val_every if options.val_every is not None else defaults.val_every
        # A checkpoint to start from is checked first: a refused one costs no dataset scan.
        self.init_record: dict[str, Any] | None = None
        model = None
        if options.init is not None:
            model, self.init_record = _init_model(options, options.init)
        self.config = train_config(options) if model is None else model.config
        self.train_data = self._dataset("train", options.seed, None)
        self.val_data = (
            self._dataset("val", VAL_SEED, options.val_episodes) if options.val_episodes else None
        )
        self.total_steps = self._total_steps(defaults)
        torch.manual_seed(options.seed)
        if model is None:
            model = build_dpnet(
                self.config,
                backbone_weights=options.backbone_weights,
                pretrained_backbone=options.pretrained_backbone,
            )
        self.model = model.to(context.device)
        self.optimizer = self._optimizer(options.optimizer or defaults.optimizer)
        self.out = Path(options.out)
        self.step = 0
        self.best_miou = -math.inf
        self.losses: list[LossRecord] = []
        self.validations: list[ValidationRecord] = []
        self._prepare_out()

    def _optimizer(self, name: Optimizer) -> torch.optim.Optimizer:
        parameters = [p for p in self.model.parameters() if p.requires_grad]
        decay = self.options.weight_decay
        if name == "adamw":
            return torch.optim.AdamW(parameters, lr=self.lr, weight_decay=decay)
        return torch.optim.SGD(
            parameters, lr=self.lr, momentum=self.options.momentum, weight_decay=decay
        )

    def _dataset(self, split: str, seed: int, episodes: int | None) -> FewShotDataset:
        o = self.options
        return build_dataset(
            o.dataset, root=o.data_root, fold=o.fold, split=split, shots=o.shots, seed=seed,
            episodes=episodes, **o.data_options.keywords(o.dataset),
        )  # fmt: skip

    def _total_steps(self, defaults: DatasetDefaults) -> int:
        if self.options.steps is not None:
            return self.options.steps
        epochs = self.options.epochs or defaults.epochs
        if epochs is None:
            return defaults.steps or 1
        per_step = self.batch_size * self.context.world_size
        return epochs * math.ceil(len(self.train_data) / per_step)

    def _prepare_out(self) -> None:
        last = self.out / "last.pt"
        if not self.options.resume:
            if last.exists():
                raise InputError(
                    f"{self.out} already holds a run (last.pt): pass --resume to continue it "
                    "or choose another --out"
                )
            self.out.mkdir(parents=True, exist_ok=True)
            return
        checkpoint = load_checkpoint(last)
        if checkpoint.config != self.config or checkpoint.train_state is None:
            raise InputError(
                f"{last} was trained with another config or has no training state; "
                "resume with the same --preset/--ablation-variant or choose another --out"
            )
        self.model.load_state_dict(checkpoint.state_dict)
        state = checkpoint.train_state
        self.optimizer.load_state_dict(state["optimizer"])
        for group in self.optimizer.param_groups:  # the saved state carries the old rate
            group["lr"] = self.lr
        self.step = int(state["step"])
        self.best_miou = float(state["best_miou"])
        self.losses = [LossRecord(**record) for record in state["losses"]]
        self.validations = [ValidationRecord(**record) for record in state["validations"]]
        self.init_record = checkpoint.meta.get("init")

    def run(self, progress: TrainProgressCallback | None) -> TrainResult:
        network = wrap_model(self.model, self.context)
        network.train()
        start_step, window = self.step, []
        start = time.perf_counter()
        while self.step < self.total_steps:
            window.append(self._train_step(network))
            self.step += 1
            elapsed = time.perf_counter() - start
            limit = self.options.time_limit_s
            stop = limit is not None and any_rank(elapsed > limit, self.context)
            checkpoint_due = (
                stop
                or self.step == self.total_steps
                or (self.val_every > 0 and self.step % self.val_every == 0)
            )
            if checkpoint_due or self.step % self.options.log_every == 0:
                self.losses.append(_average(self.step, window))
                window = []
            validation = self._validate_and_save() if checkpoint_due else None
            if progress is not None and self.context.is_main and self.losses:
                progress(TrainProgress(self.step, self.total_steps, self.losses[-1], validation))
            if stop:
                break
        seconds = time.perf_counter() - start
        synchronize(self.context)
        best = self.out / "best.pt"
        return TrainResult(
            out=self.out,
            last_checkpoint=self.out / "last.pt",
            best_checkpoint=best if best.exists() else None,
            config=self.config,
            start_step=start_step,
            steps=self.step,
            total_steps=self.total_steps,
            lr=self.lr,
            batch_size=self.batch_size,
            losses=tuple(self.losses),
            validations=tuple(self.validations),
            seconds=seconds,
            steps_per_second=(self.step - start_step) / seconds if seconds > 0 else 0.0,
            world_size=self.context.world_size,
            rank=self.context.rank,
            weights_sha256=weights_sha256(self.model),
        )

    def _train_step(self, network: torch.nn.Module) -> DPNetLosses:
        batch = self._batch()
        output: SegmentOutput = network(
            batch.support_images, batch.support_masks, batch.query_image
        )
        if output.aux_logits is None:
            raise RuntimeError("DPNet in training mode returned no auxiliary logits")
        losses = dpnet_losses(
            output.logits,
            output.aux_logits,
            output.scores,
            output.confidence,
            batch.query_mask,
            aux_weight=self.config.aux_weight,
            dis_weight=self.config.dis_weight,
        )
        self.optimizer.zero_grad(set_to_none=True)
        losses.total.backward()
        self.optimizer.step()
        return DPNetLosses(*(term.detach() for term in losses))

    def _batch(self) -> EpisodeTensors:
        """This rank's episodes of the current step, augmented, on the device."""
        sequence = np.random.SeedSequence([self.options.seed, self.step, self.context.rank])
        rng = np.random.Generator(np.random.PCG64(sequence))
        torch.manual_seed(int(sequence.generate_state(1, dtype=np.uint64)[0]))
        indices = shard_episode_indices(
            self.step, self.batch_size, self.context, len(self.train_data)
        )
        size = self.config.input_size
        batch = collate(
            [episode_to_tensors(self.train_data[i], size, augment=True, rng=rng) for i in indices]
        )
        return EpisodeTensors(*(tensor.to(self.context.device) for tensor in batch))

    def _validate_and_save(self) -> ValidationRecord | None:
        """Rank 0: validate, write ``last.pt`` (and ``best.pt`` on a new best)."""
        if not self.context.is_main:
            return None
        record = None
        if self.val_data is not None:
            result = evaluate(self.model, self.val_data)
            record = _validation_record(self.step, result)
            self.validations.append(record)
        improved = record is not None and record.miou_pfenet > self.best_miou
        if improved and record is not None:
            self.best_miou = record.miou_pfenet
        meta = self._meta(record)
        save_checkpoint(self.out / "last.pt", self.model, meta, self._train_state())
        if improved:
            save_checkpoint(self.out / "best.pt", self.model, meta)
        return record

    def _meta(self, record: ValidationRecord | None) -> dict[str, Any]:
        per_epoch = math.ceil(len(self.train_data) / (self.batch_size * self.context.world_size))
        metrics: dict[str, float] = {"step": float(self.step)}
        if record is not None:
            metrics.update(
                miou_canet=record.miou_canet, miou_pfenet=record.miou_pfenet, fbiou=record.fbiou
            )
        o = self.options
        return make_meta(
            dataset=o.dataset, fold=o.fold, shots=o.shots, epoch=self.step // per_epoch,
            metrics=metrics, init=self.init_record,
        )  # fmt: skip

    def _train_state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "best_miou": self.best_miou,
            "losses": [asdict(record) for record in self.losses],
            "validations": [asdict(record) for record in self.validations],
            "seed": self.options.seed,
            "lr": self.lr,
            "batch_size": self.batch_size,
            "world_size": self.context.world_size,
        }


def weights_sha256(model: torch.nn.Module) -> str:
    """sha256 over the names, shapes and bytes of every state-dict tensor, in key order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _init_model(options: TrainOptions, path: Path) -> tuple[DPNet, dict[str, Any]]:
    """The network of checkpoint ``path`` with its weights, and the record of where they came
    from (``meta["init"]``).

    Raises:
        ModelFileError: the checkpoint is missing, damaged or inconsistent.
        InputError: the options ask for another network (:func:`init_config`).
    """
    model, checkpoint = load_model(path)
    init_config(options, checkpoint.config, path)
    record = {
        "checkpoint": str(path),
        "sha256": sha256_file(path),
        "dataset": checkpoint.meta.get("dataset"),
        "fold": checkpoint.meta.get("fold"),
    }
    return model, record


def _average(step: int, window: list[DPNetLosses]) -> LossRecord:
    means = [float(torch.stack(list(terms)).mean()) for terms in zip(*window, strict=True)]
    return LossRecord(step, *means)


def _validation_record(step: int, result: EvalResult) -> ValidationRecord:
    return ValidationRecord(step, result.miou_canet, result.miou_pfenet, result.fbiou)
