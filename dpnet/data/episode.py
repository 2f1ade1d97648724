"""Few-shot episodes and the seeded / list-file episode sampler shared by every dataset.

An episode is a query image and K support images of one class c, with binary masks
(1 = class c, 0 = anything else, 255 = ignore). Every dataset draws its episodes through
:func:`episode_rng`, a ``numpy.random.Generator(PCG64)`` seeded from ``(seed, index)``
only, so the same seed gives the same episodes on every machine, in any order, in any
process (data-loader workers and DDP ranks included); the global RNG is never used.

Two ways to choose the query (docs/design.md#data-training-and-evaluation):

* ``seed``: the class uniformly among the split's classes, then the query uniformly among
  that class's images (HSNet's COCO protocol, and every synthetic episode);
* ``list``: query ``i`` is line ``i mod len(list)`` of an HSNet list file
  (``<voc_id>__<class>``, HSNet's PASCAL protocol).

In both, the K supports are drawn without replacement from the other images of the class.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

from dpnet_runtime.errors import DatasetError, InputError, OptionError

__all__ = [
    "Episode",
    "EpisodePlan",
    "FewShotDataset",
    "ListEntry",
    "PooledDataset",
    "Sampling",
    "Split",
    "binary_mask",
    "episode_rng",
    "fold_class_ids",
    "group_by_class",
    "plan_list_episode",
    "plan_seeded_episode",
    "split_class_ids",
]

Split = Literal["train", "val"]
Sampling = Literal["seed", "list"]
ListEntry = tuple[str, int]
"""One line of a list file: (image name, 1-based class id)."""

IGNORE = 255
_LOG = logging.getLogger(__name__)
NUM_FOLDS = 4


@dataclass(frozen=True)
class Episode:
    """One few-shot episode at the images' original sizes.

    Attributes:
        query_image: [H, W, 3] uint8 RGB.
        query_mask: [H, W] uint8, 1 = episode class, 0 = other, 255 = ignore.
        support_images: K x [Hk, Wk, 3] uint8 RGB.
        support_masks: K x [Hk, Wk] uint8 in {0, 1, 255}.
        class_id: the dataset's 1-based class index c.
        query_name: the query image's name in its dataset.
        support_names: the K support image names, all different from ``query_name``.
    """

    query_image: np.ndarray
    query_mask: np.ndarray
    support_images: tuple[np.ndarray, ...]
    support_masks: tuple[np.ndarray, ...]
    class_id: int
    query_name: str
    support_names: tuple[str, ...]

    @property
    def shots(self) -> int:
        """K, the number of support pairs."""
        return len(self.support_images)


@dataclass(frozen=True)
class EpisodePlan:
    """Which images make an episode, before any pixel is read."""

    class_id: int
    query_name: str
    support_names: tuple[str, ...]


def episode_rng(seed: int, index: int, *streams: int) -> np.random.Generator:
    """The generator of episode ``index`` under ``seed`` (PCG64, platform independent).

    Args:
        seed: the run's seed (non-negative).
        index: the episode index (non-negative).
        streams: extra non-negative integers naming independent sub-streams (e.g. the
            split or an image slot), so that two uses never share random numbers.
    """
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, index, *streams])))


def fold_class_ids(
    num_classes: int, fold: int, *, interleaved: bool = False, folds: int = NUM_FOLDS
) -> tuple[int, ...]:
    """The 1-based test classes of ``fold``.

    Consecutive: fold i = classes i*n+1 .. i*n+n with n = num_classes / folds (PASCAL-5i,
    COCO-20i consecutive). Interleaved: fold i = classes c with (c - 1) mod folds == i
    (COCO-20i of PFENet/HSNet).

    >>> fold_class_ids(20, 1)
    (6, 7, 8, 9, 10)
    >>> fold_class_ids(80, 2, interleaved=True)[:3]
    (3, 7, 11)
    """
    if not 0 <= fold < folds:
        raise OptionError(f"fold must be in 0..{folds - 1}, got {fold}")
    if interleaved:
        return tuple(c for c in range(1, num_classes + 1) if (c - 1) % folds == fold)
    per_fold = num_classes // folds
    return tuple(range(fold * per_fold + 1, (fold + 1) * per_fold + 1))


def split_class_ids(
    num_classes: int, fold: int, split: str, *, interleaved: bool = False
) -> tuple[int, ...]:
    """Classes of a split: the fold's classes for ``val``, all the others for ``train``."""
    check_split(split)
    test = fold_class_ids(num_classes, fold, interleaved=interleaved)
    if split == "val":
        return test
    return tuple(c for c in range(1, num_classes + 1) if c not in test)


def check_split(split: str) -> None:
    """Raise :class:`InputError` unless ``split`` is ``train`` or ``val``."""
    if split not in get_args(Split):
        raise InputError(f"split must be one of {get_args(Split)}, got {split!r}")


def binary_mask(label: np.ndarray, class_id: int) -> np.ndarray:
    """Episode mask of class ``class_id`` from a class-label map.

    Args:
        label: [H, W] uint8 class ids, 255 = ignore.
        class_id: the episode class c.

    Returns:
        [H, W] uint8: 1 where ``label == c``, 255 where ``label == 255``, 0 elsewhere.
    """
    mask = (label == class_id).astype(np.uint8)
    mask[label == IGNORE] = IGNORE
    return mask


def group_by_class(entries: Sequence[ListEntry]) -> dict[int, tuple[str, ...]]:
    """Image names per class, in first-seen order without duplicates."""
    pools: dict[int, dict[str, None]] = {}
    for name, class_id in entries:
        pools.setdefault(class_id, {})[name] = None
    return {class_id: tuple(names) for class_id, names in pools.items()}


def _draw_supports(
    pool: Sequence[str], query_name: str, shots: int, rng: np.random.Generator, class_id: int
) -> tuple[str, ...]:
    candidates = [name for name in pool if name != query_name]
    if len(candidates) < shots:
        raise DatasetError(
            f"class {class_id} has {len(candidates)} images besides the query, "
            f"{shots} supports needed; use fewer shots or a larger split list"
        )
    picks = rng.choice(len(candidates), size=shots, replace=False)
    return tuple(candidates[int(i)] for i in picks)


def plan_seeded_episode(
    pools: Mapping[int, Sequence[str]],
    class_ids: Sequence[int],
    shots: int,
    rng: np.random.Generator,
) -> EpisodePlan:
    """Class uniformly among ``class_ids``, query uniformly in its pool, K other supports.

    Raises:
        DatasetError: a class has no image, or fewer than K + 1.
    """
    class_id = int(class_ids[int(rng.integers(len(class_ids)))])
    pool = pools.get(class_id, ())
    if not pool:
        raise DatasetError(f"class {class_id} has no image in this split; check the dataset root")
    query_name = pool[int(rng.integers(len(pool)))]
    return EpisodePlan(class_id, query_name, _draw_supports(pool, query_name, shots, rng, class_id))


def plan_list_episode(
    entries: Sequence[ListEntry],
    pools: Mapping[int, Sequence[str]],
    index: int,
    shots: int,
    rng: np.random.Generator,
) -> EpisodePlan:
    """Query = ``entries[index mod len]``, K other supports of its class from ``pools``."""
    query_name, class_id = entries[index % len(entries)]
    return EpisodePlan(
        class_id, query_name, _draw_supports(pools[class_id], query_name, shots, rng, class_id)
    )


class FewShotDataset(ABC):
    """Base of every few-shot dataset: ``dataset[i]`` is episode i, fixed by (seed, i).

    Attributes:
        fold: the test fold 0..3.
        split: ``train`` (episodes of the other folds' classes) or ``val`` (the fold's).
        shots: K.
        seed: the episode seed.
        class_ids: 1-based classes whose episodes this split makes.
        class_names: name of every class of the dataset (all folds).
    """

    def __init__(
        self,
        *,
        fold: int,
        split: str,
        shots: int,
        seed: int,
        episodes: int,
        class_ids: tuple[int, ...],
        class_names: dict[int, str],
    ) -> None:
        check_split(split)
        if shots < 1:
            raise OptionError(f"shots must be at least 1, got {shots}")
        if episodes < 1:
            raise OptionError(f"episodes must be at least 1, got {episodes}")
        if seed < 0:
            raise OptionError(f"seed must be non-negative, got {seed}")
        self.fold = fold
        self.split: Split = "train" if split == "train" else "val"
        self.shots = shots
        self.seed = seed
        self.episodes = episodes
        self.class_ids = class_ids
        self.class_names = class_names

    def __len__(self) -> int:
        return self.episodes

    def __getitem__(self, index: int) -> Episode:
        if not 0 <= index < self.episodes:
            raise IndexError(f"episode {index} out of range 0..{self.episodes - 1}")
        return self._episode(index)

    @abstractmethod
    def _episode(self, index: int) -> Episode:
        """Episode ``index`` (already range-checked)."""


class PooledDataset(FewShotDataset):
    """A dataset of real image files: per-class pools of names, optional list-file queries.

    Subclasses provide :meth:`load`, reading one image and its class-label map.
    """

    def __init__(
        self,
        *,
        pools: Mapping[int, Sequence[str]],
        entries: Sequence[ListEntry] | None,
        sampling: str,
        **base: object,
    ) -> None:
        super().__init__(**base)  # type: ignore[arg-type]
        if sampling not in get_args(Sampling):
            raise InputError(f"sampling must be one of {get_args(Sampling)}, got {sampling!r}")
        if sampling == "list" and not entries:
            raise InputError("sampling='list' needs a split list; none is available here")
        self.sampling: Sampling = "list" if sampling == "list" else "seed"
        self.pools = {c: tuple(pools.get(c, ())) for c in self.class_ids}
        self.entries = tuple(entries or ())
        # Seeded episodes draw among classes with enough images; a real split has them all,
        # a subset of a dataset may not, which is worth a warning but not a failure.
        self.sampled_class_ids = tuple(c for c in self.class_ids if len(self.pools[c]) > self.shots)
        if not self.sampled_class_ids:
            raise DatasetError(
                f"no {self.split} class of fold {self.fold} has {self.shots + 1} images; "
                "check the dataset root and split lists"
            )
        skipped = sorted(set(self.class_ids) - set(self.sampled_class_ids))
        if skipped and self.sampling == "seed":
            _LOG.warning(
                "classes %s have fewer than %d images: no episode uses them",
                skipped,
                self.shots + 1,
            )

    def plan(self, index: int) -> EpisodePlan:
        """The image names of episode ``index``."""
        rng = episode_rng(self.seed, index)
        if self.sampling == "list":
            return plan_list_episode(self.entries, self.pools, index, self.shots, rng)
        return plan_seeded_episode(self.pools, self.sampled_class_ids, self.shots, rng)

    @abstractmethod
    def load(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Image [H, W, 3] uint8 RGB and class-label map [H, W] uint8 (255 ignore) of ``name``."""

    def _episode(self, index: int) -> Episode:
        plan = self.plan(index)
        pairs = [self.load(name) for name in (plan.query_name, *plan.support_names)]
        images = tuple(image for image, _ in pairs)
        masks = tuple(binary_mask(label, plan.class_id) for _, label in pairs)
        return Episode(
            query_image=images[0],
            query_mask=masks[0],
            support_images=images[1:],
            support_masks=masks[1:],
            class_id=plan.class_id,
            query_name=plan.query_name,
            support_names=plan.support_names,
        )
