"""The embedded synthetic few-shot benchmark: 20 procedurally drawn classes in 4 folds of 5.

Class c (1..20) is a (shape, texture) pair: shape ``(c - 1) mod 5`` among disk, square,
triangle, ring, cross and texture ``(fold + shape) mod 4`` among stripes, checker, dots,
concentric rings, with fold = (c - 1) // 5. The 20 pairs are all different, and every fold
holds all 5 shapes and all 4 textures, so a test class is a *new combination* of parts seen
in training: only the support tells the model which one to segment.

A scene: a cluttered background (smooth colour noise, solid distractor blobs, pixel noise)
with 1 to 3 objects, one of the episode class and 0-2 of other classes (in ``train``, only
training classes ever appear, so the fold's classes are never seen in training). Each
instance jitters size, aspect, rotation, texture period and phase, and its colours: the
class has a base hue but an instance's hue moves by up to ±0.15 of the colour wheel and its
brightness by ±30 %, so colour alone does not identify the class and the query's object
differs from the support's (the intra-class gap DPNet's query-derived prototype closes).
A 1-2 px 255 ignore band lines every object border, so the canet and pfenet protocols differ.

Everything is a function of (seed, split, episode index, image slot): support and query are
different scenes drawn from different streams. About 1-2 ms per 160 x 160 scene (numpy).
"""

from __future__ import annotations

import colorsys

import numpy as np

from dpnet.data.episode import (
    Episode,
    FewShotDataset,
    binary_mask,
    episode_rng,
    split_class_ids,
)

__all__ = [
    "NUM_CLASSES",
    "SHAPES",
    "TEXTURES",
    "SyntheticDataset",
    "class_parts",
    "render_scene",
]

SHAPES = ("disk", "square", "triangle", "ring", "cross")
TEXTURES = ("stripes", "checker", "dots", "concentric")
NUM_CLASSES = 20
DEFAULT_IMAGE_SIZE = 160
DEFAULT_TRAIN_EPISODES = 10_000
DEFAULT_VAL_EPISODES = 1000
_IGNORE = 255
_HUE_JITTER = 0.15
_SPLIT_STREAM = {"train": 1, "val": 2}
# Object radius as a fraction of the image side.
_RADIUS_RANGE = (0.12, 0.2)


def class_parts(class_id: int) -> tuple[str, str]:
    """(shape, texture) of class ``class_id`` (1..20).

    >>> class_parts(1), class_parts(7)
    (('disk', 'stripes'), ('square', 'dots'))
    """
    shape = (class_id - 1) % len(SHAPES)
    fold = (class_id - 1) // len(SHAPES)
    return SHAPES[shape], TEXTURES[(fold + shape) % len(TEXTURES)]


def _class_hue(class_id: int) -> float:
    # Golden-ratio spacing: neighbouring classes get far-apart base hues.
    return (class_id * 0.618034) % 1.0


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside test in object coordinates scaled so the object's radius is 1."""
    radius2 = u * u + v * v
    if shape == "disk":
        return radius2 <= 1.0
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.8
    if shape == "triangle":
        inside = np.ones_like(u, dtype=bool)
        for angle in (np.pi / 2, np.pi / 2 + 2 * np.pi / 3, np.pi / 2 + 4 * np.pi / 3):
            inside &= u * np.cos(angle) + v * np.sin(angle) <= 0.55
        return inside
    if shape == "ring":
        return (radius2 <= 1.0) & (radius2 >= 0.5**2)
    arm = 0.32  # cross
    return ((np.abs(u) <= arm) & (np.abs(v) <= 1.0)) | ((np.abs(v) <= arm) & (np.abs(u) <= 1.0))


def _texture(texture: str, u: np.ndarray, v: np.ndarray, period: float, phase: float) -> np.ndarray:
    """Boolean pattern (True = first colour) in object coordinates, ``period`` in radius units."""
    u = u / period + phase
    v = v / period + phase
    if texture == "stripes":
        return np.sin(2 * np.pi * u) > 0
    if texture == "checker":
        return (np.floor(u) + np.floor(v)) % 2 == 0
    if texture == "dots":
        return (u - np.round(u)) ** 2 + (v - np.round(v)) ** 2 < 0.3**2
    return np.sin(2 * np.pi * np.hypot(u - phase, v - phase)) > 0  # concentric


def _hsv_rgb(hue: float, saturation: float, value: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(hue % 1.0, saturation, value), dtype=np.float32) * 255


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """[size, size, 3] smooth colour field: a random cells x cells grid, bilinearly upsampled."""
    grid = rng.uniform(40, 215, size=(cells, cells, 3)).astype(np.float32)
    positions = np.linspace(0, cells - 1, size, dtype=np.float32)
    low = np.minimum(positions.astype(np.int64), cells - 2)
    frac = positions - low
    interp = np.zeros((size, cells), dtype=np.float32)
    interp[np.arange(size), low] = 1 - frac
    interp[np.arange(size), low + 1] = frac
    rows = np.tensordot(interp, grid, axes=(1, 0))  # [size, cells, 3]
    return np.matmul(interp, rows)  # per row y: [size, cells] @ [cells, 3]


def _border_band(label: np.ndarray) -> np.ndarray:
    """Pixels whose 3 x 3 neighbourhood holds another label, and that touch an object."""
    padded = np.pad(label, 1, mode="edge")
    height, width = label.shape
    differs = np.zeros(label.shape, dtype=bool)
    touches_object = label > 0
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            neighbour = padded[dy : dy + height, dx : dx + width]
            differs |= neighbour != label
            touches_object |= neighbour > 0
    return differs & touches_object


def _place_centres(rng: np.random.Generator, radii: np.ndarray, size: int) -> np.ndarray:
    """Centres [n, 2] inside the image, kept apart so objects rarely overlap."""
    centres = np.zeros((len(radii), 2))
    for i, radius in enumerate(radii):
        for _ in range(20):
            centre = rng.uniform(radius, size - radius, size=2)
            gaps = np.hypot(*(centres[:i] - centre).T) - radii[:i] - radius
            if i == 0 or gaps.min() > 0:
                break
        centres[i] = centre
    return centres


Window = tuple[slice, slice]


def _rotated_coords(
    centre: np.ndarray, extent: float, angle: float, scales: tuple[float, float], size: int
) -> tuple[Window, np.ndarray, np.ndarray]:
    """Coordinates (u, v) rotated by ``angle`` and divided by ``scales`` around ``centre``.

    Only the window of half-side ``extent`` around the centre is computed (objects are small,
    so this is most of the generator's speed).
    """
    top, left = (max(0, int(c - extent)) for c in centre)
    bottom, right = (min(size, int(c + extent) + 2) for c in centre)
    dy = np.arange(top, bottom, dtype=np.float32)[:, None] - centre[0]
    dx = np.arange(left, right, dtype=np.float32)[None, :] - centre[1]
    cos, sin = np.cos(angle), np.sin(angle)
    u = (cos * dx + sin * dy) / scales[0]
    v = (cos * dy - sin * dx) / scales[1]
    return (slice(top, bottom), slice(left, right)), u, v


def _draw_object(
    image: np.ndarray,
    label: np.ndarray,
    class_id: int,
    centre: np.ndarray,
    radius: float,
    rng: np.random.Generator,
) -> None:
    shape, texture = class_parts(class_id)
    angle = rng.uniform(0, 2 * np.pi)
    aspect = rng.uniform(0.8, 1.25)
    # Inside points have |u|, |v| <= 1, so |dx|, |dy| <= 1.25 radius: a 1.5 radius window.
    window, u, v = _rotated_coords(
        centre, 1.5 * radius, angle, (radius / aspect, radius * aspect), image.shape[0]
    )
    inside = _shape_mask(shape, u, v)
    hue = _class_hue(class_id) + rng.uniform(-_HUE_JITTER, _HUE_JITTER)
    value = rng.uniform(0.65, 1.0)
    first = _hsv_rgb(hue, rng.uniform(0.6, 1.0), value)
    second = _hsv_rgb(hue + rng.uniform(-0.05, 0.05), rng.uniform(0.2, 0.6), value * 0.35)
    pattern = _texture(texture, u, v, rng.uniform(0.35, 0.5), rng.uniform(0, 1))
    image[window][inside] = np.where(pattern[inside][:, None], first, second)
    label[window][inside] = class_id


def _draw_blobs(image: np.ndarray, rng: np.random.Generator) -> None:
    """Solid ellipses of random colours: clutter that belongs to no class."""
    size = image.shape[0]
    for _ in range(int(rng.integers(3, 7))):
        centre = rng.uniform(0, size, size=2)
        axes = rng.uniform(0.04, 0.12, size=2) * size
        angle = rng.uniform(0, np.pi)
        window, u, v = _rotated_coords(centre, float(axes.max()), angle, (axes[0], axes[1]), size)
        image[window][u * u + v * v <= 1.0] = rng.uniform(20, 235, size=3)


def render_scene(
    class_id: int,
    other_class_ids: tuple[int, ...],
    rng: np.random.Generator,
    *,
    size: int = DEFAULT_IMAGE_SIZE,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one scene holding an object of ``class_id`` and 0-2 objects of other classes.

    Args:
        class_id: the class that must appear (1..20).
        other_class_ids: classes the other objects are drawn from (may be empty).
        rng: the scene's generator; the scene is a function of its state only.
        size: image side in pixels.

    Returns:
        image [size, size, 3] uint8 RGB and label [size, size] uint8 (0 background,
        class ids, 255 on the object borders).
    """
    image = _smooth_noise(rng, size, cells=int(rng.integers(3, 7)))
    _draw_blobs(image, rng)
    extra = int(rng.integers(0, 3)) if other_class_ids else 0
    classes = [class_id, *(int(c) for c in rng.choice(other_class_ids, size=extra))]
    radii = rng.uniform(*_RADIUS_RANGE, size=len(classes)) * size
    centres = _place_centres(rng, radii, size)
    label = np.zeros((size, size), dtype=np.uint8)
    for slot in rng.permutation(len(classes)):
        _draw_object(image, label, classes[slot], centres[slot], radii[slot], rng)
    image += rng.normal(0, 6, size=image.shape).astype(np.float32)
    label[_border_band(label)] = _IGNORE
    return np.clip(image, 0, 255).astype(np.uint8), label


class SyntheticDataset(FewShotDataset):
    """Episodes of the synthetic benchmark, generated on the fly, a function of (seed, index).

    Fold i tests classes 5i+1..5i+5 and trains on the other 15. In ``train`` scenes only hold
    training classes; in ``val`` the other objects may be of any class.

    >>> dataset = SyntheticDataset(fold=0, split="val", shots=1, seed=0, episodes=10)
    >>> episode = dataset[3]
    >>> episode.query_image.shape, episode.class_id in dataset.class_ids
    ((160, 160, 3), True)
    """

    def __init__(
        self,
        *,
        fold: int,
        split: str,
        shots: int,
        seed: int,
        episodes: int | None = None,
        image_size: int = DEFAULT_IMAGE_SIZE,
    ) -> None:
        class_ids = split_class_ids(NUM_CLASSES, fold, split)
        default = DEFAULT_TRAIN_EPISODES if split == "train" else DEFAULT_VAL_EPISODES
        super().__init__(
            fold=fold,
            split=split,
            shots=shots,
            seed=seed,
            episodes=default if episodes is None else episodes,
            class_ids=class_ids,
            class_names={c: "-".join(class_parts(c)) for c in range(1, NUM_CLASSES + 1)},
        )
        self.image_size = image_size
        all_classes = tuple(range(1, NUM_CLASSES + 1))
        self._scene_classes = class_ids if split == "train" else all_classes

    def _scene(self, index: int, slot: int, class_id: int) -> tuple[np.ndarray, np.ndarray]:
        rng = episode_rng(self.seed, index, _SPLIT_STREAM[self.split], slot + 1)
        others = tuple(c for c in self._scene_classes if c != class_id)
        return render_scene(class_id, others, rng, size=self.image_size)

    def _episode(self, index: int) -> Episode:
        rng = episode_rng(self.seed, index, _SPLIT_STREAM[self.split])
        class_id = int(self.class_ids[int(rng.integers(len(self.class_ids)))])
        scenes = [self._scene(index, slot, class_id) for slot in range(self.shots + 1)]
        names = [f"{self.split}/{self.seed}/{index}/{slot}" for slot in range(self.shots + 1)]
        masks = [binary_mask(label, class_id) for _, label in scenes]
        return Episode(
            query_image=scenes[0][0],
            query_mask=masks[0],
            support_images=tuple(image for image, _ in scenes[1:]),
            support_masks=tuple(masks[1:]),
            class_id=class_id,
            query_name=names[0],
            support_names=tuple(names[1:]),
        )
