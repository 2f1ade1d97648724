"""The code snippets of the docs: how they are found, marked, prepared and run by the tests.

Every fenced block of ``README.md`` and ``docs/**/*.md`` names its language. ``bash`` (``sh``,
``shell``) and ``python`` blocks are snippets: the tests run them, each page's snippets in order
in one fresh workspace (below), and every command line must exit 0 without printing an error
line (``error: ...`` or ``{"error": ...}``). Any other language (``text``, ``json``...) is shown,
not run.

Markers: HTML comments directly above a fence (invisible in the rendered page), one directive
each, in the form ``<!-- snippet: DIRECTIVE -->``:

- ``skip NEED`` / ``skip NEED: PREFIX``: the block (or each of its commands that starts with
  PREFIX) needs what the test machine lacks; NEED is a key of :data:`NEEDS`, which says why.
  A skipped command's options are still checked against the command's own.
- ``replace "OLD" "NEW"``: a budget substitution, applied to the block's text before it runs
  (``--steps 1500`` -> ``--steps 2``), so that a command that trains for minutes runs in
  seconds with every other option as shown. OLD must occur in the block.
- ``given NAME ...``: Python variables the block uses without defining, from :data:`GIVEN`.
- ``files PATH ...``: extra files the block reads, made as :data:`FILES` says.
- ``server``: the block talks to ``dpnet-serve``: a server of the workspace's ``out/`` runs
  while it does, and ``http://127.0.0.1:8000`` in the block is that server's address.
- ``copy-of PAGE``: the block is the same text as a block of PAGE and runs there.
- ``in-repo``: the block runs in the repository root instead of the workspace (the developer
  commands that read the source tree; they must write nothing there but ignored caches).

Before a shell block runs: ``[--option ...]`` groups (synopsis: optional) are left out; install
steps (``python3 -m venv ...``, ``pip install ...``) are left out, since the test runs in the
installed ``dev`` environment, and ``.venv/bin/X`` is that environment's X.

The workspace (:func:`build_workspace`, made once per test session and copied for each page)
holds what the docs' commands name: ``model.pt`` (a tiny DPNet trained for a few minutes) and
``out/`` (its export: FP32, FP16 and INT8 graphs), support images ``cat.jpg``, ``cat1.jpg`` ..
``cat3.jpg`` with their masks (``cat.png``, ``cat_mask.png``, ``catN.png``, ``catN_mask.png``:
0/255),
queries ``street.jpg`` and ``q.jpg``, query folders ``photos/`` and ``more/`` with their
ground truth in ``truth/``, and ``mine/``, a ``folder`` dataset with classes cat, dog, bird and
fish; every image is a scene of the embedded synthetic benchmark.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

ROOT = Path(__file__).resolve().parents[1]
SHELL = frozenset({"bash", "sh", "shell"})
PYTHON = frozenset({"python", "py"})
DEFAULT_URL = "http://127.0.0.1:8000"

NEEDS: dict[str, str] = {
    "gpu": "needs an NVIDIA GPU",
    "tensorrt": "needs TensorRT and an NVIDIA GPU",
    "dataset": "needs a dataset that is not in the repository (PASCAL VOC, COCO)",
    "docker": "needs Docker and NVIDIA's Triton container",
    "chromium": "needs Chromium (apt-get install chromium)",
    "ci": "is what the tests run themselves (the test suite, the strict docs build)",
    "server": "starts a service that runs until it is stopped (the blocks marked `server` run "
    "against one that the test starts the same way)",
    "measurement": "a measurement for benchmarks/results: minutes on a quiet machine",
}
"""Why a block (or command) is not run: the keys ``skip`` takes."""

GIVEN: dict[str, str] = {
    "images": "[_rgb('cat1.jpg'), _rgb('cat2.jpg')]  # uint8 [H, W, 3] RGB",
    "masks": "[_mask('cat1_mask.png'), _mask('cat2_mask.png')]  # uint8 [H, W], 1 = object",
    "query": "_rgb('street.jpg')",
    "image1": "_rgb('cat1.jpg')",
    "image2": "_rgb('cat2.jpg')",
    "mask1": "_mask('cat1_mask.png')",
    "mask2": "_mask('cat2_mask.png')",
    "voc_label": "_np.asarray(_Image.open('2007_000123.png'))  # uint8 [H, W], 8 = cat",
    "support_images": "_tensors()[0]  # float32 [1, 1, 3, 321, 321], normalised",
    "support_masks": "_tensors()[1]  # float32 [1, 1, 321, 321], 1 = object",
    "query_image": "_tensors()[2]  # float32 [1, 3, 321, 321], normalised",
}
"""Python variables a block may take as given: name -> expression, run in the workspace."""

_GIVEN_HELPERS = """
import numpy as _np
from PIL import Image as _Image

def _rgb(path):
    return _np.asarray(_Image.open(path).convert("RGB"))

def _mask(path):
    return (_np.asarray(_Image.open(path).convert("L")) > 127).astype(_np.uint8)

def _tensors(size=321):
    import torch
    from dpnet_runtime.preprocess import normalize_images, resize_image, resize_label_nearest
    image = resize_image(_rgb("cat1.jpg"), size)
    mask = resize_label_nearest(_mask("cat1_mask.png"), size)
    query = resize_image(_rgb("street.jpg"), size)
    return (
        torch.from_numpy(normalize_images(image[None, None])),
        torch.from_numpy(mask[None, None].astype(_np.float32)),
        torch.from_numpy(normalize_images(query[None])),
    )
"""

DIRECTIVES = frozenset({"skip", "replace", "given", "files", "server", "copy-of", "in-repo"})

_MARKER = re.compile(r"<!--\s*snippet:\s*(?P<directive>.*?)\s*-->\s*$")
_FENCE = re.compile(r"^```(?P<language>\S*)[^\n]*\n(?P<body>.*?)^```\s*$", re.M | re.S)
_SYNOPSIS = re.compile(r"\s\[--?[^\[\]]*\]")
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class Snippet:
    """One fenced block of a page, with its markers."""

    page: str
    line: int
    language: str
    text: str
    directives: tuple[str, ...]

    @property
    def label(self) -> str:
        """``docs/page.md:LINE`` (the fence's line)."""
        return f"{self.page}:{self.line}"

    @property
    def runnable(self) -> bool:
        """A shell or Python block (others are shown, not run)."""
        return self.language in SHELL | PYTHON

    def values(self, name: str) -> list[str]:
        """The arguments of every directive ``name``."""
        return [d[len(name) :].strip() for d in self.directives if d.split(" ", 1)[0] == name]

    @property
    def skips(self) -> list[tuple[str, str]]:
        """``(need, command prefix)``; an empty prefix skips the whole block."""
        pairs = []
        for value in self.values("skip"):
            need, _, prefix = value.partition(":")
            pairs.append((need.strip(), prefix.strip()))
        return pairs

    @property
    def whole_skip(self) -> str | None:
        """Why the whole block is not run, or ``None``."""
        reasons = [NEEDS.get(need, need) for need, prefix in self.skips if not prefix]
        copies = self.values("copy-of")
        if copies:
            reasons.append(f"is a copy of a block of {copies[0]}, which runs there")
        return "; ".join(reasons) or None

    @property
    def server(self) -> bool:
        """The block talks to a running dpnet-serve."""
        return "server" in self.directives

    def budgeted(self) -> str:
        """The text with every ``replace`` applied (an OLD that does not occur is an error)."""
        text = self.text
        for value in self.values("replace"):
            old, new = parse_replace(value)
            if old not in text:
                raise AssertionError(f"{self.label}: replace {old!r}: not in the block")
            text = text.replace(old, new)
        return text


def problems(snippet: Snippet) -> list[str]:
    """What is wrong with a block's markers (empty when nothing is)."""
    found = [] if snippet.language else ["a fence without a language (use text for output)"]
    for directive in snippet.directives:
        name = directive.split(" ", 1)[0]
        if name not in DIRECTIVES:
            found.append(f"unknown directive {directive!r} (known: {sorted(DIRECTIVES)})")
    if snippet.directives and not snippet.runnable:
        found.append(f"markers on a {snippet.language!r} block, which is not run")
    found += [f"skip {need!r}: not in NEEDS" for need, _ in snippet.skips if need not in NEEDS]
    for value in snippet.values("replace"):
        try:
            parse_replace(value)
        except AssertionError as exc:
            found.append(str(exc))
    unknown = set(" ".join(snippet.values("given")).split()) - set(GIVEN)
    found += [f"given {name!r}: not in GIVEN" for name in sorted(unknown)]
    missing = set(" ".join(snippet.values("files")).split()) - set(FILES)
    found += [f"files {name!r}: not in FILES" for name in sorted(missing)]
    for page in snippet.values("copy-of"):
        path = ROOT / page
        if not path.is_file() or snippet.text not in [s.text for s in parse_page(path)]:
            found.append(f"copy-of {page}: no block of that page has this text")
    return found


def parse_replace(value: str) -> tuple[str, str]:
    """``"OLD" "NEW"`` -> the two strings."""
    parts = _QUOTED.findall(value)
    if len(parts) != 2 or _QUOTED.sub("", value).strip():
        raise AssertionError(f'replace takes "OLD" "NEW", got {value!r}')
    return parts[0], parts[1]


def doc_pages() -> list[Path]:
    """README.md and every page under docs/."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def parse_page(path: Path) -> list[Snippet]:
    """The fenced blocks of one page, with the directives of the comments just above each."""
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    snippets = []
    for match in _FENCE.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        directives = []
        above = line - 2
        while above >= 0 and (marker := _MARKER.match(lines[above].strip())):
            directives.insert(0, marker["directive"])
            above -= 1
        page = path.relative_to(ROOT).as_posix()
        snippets.append(Snippet(page, line, match["language"], match["body"], tuple(directives)))
    return snippets


def all_snippets() -> list[Snippet]:
    """Every fenced block of every page."""
    return [snippet for page in doc_pages() for snippet in parse_page(page)]


def logical_lines(text: str) -> list[str]:
    """Shell lines with backslash continuations joined; blank and comment lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", text)
    lines = (line.strip() for line in joined.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def is_install_step(part: str) -> bool:
    """``python3 -m venv ...`` or a ``pip install``: the environment the test runs in."""
    words = part.split()
    return words[:3] in (["python3", "-m", "venv"], ["python", "-m", "venv"]) or (
        len(words) > 1 and words[0].endswith("pip") and words[1] == "install"
    )


def shell_commands(text: str) -> list[str]:
    """The command lines a shell block runs: synopsis groups and install steps left out."""
    commands = []
    for line in logical_lines(text):
        line = _SYNOPSIS.sub("", line).replace(".venv/bin/", "")
        parts = [part for part in line.split(" && ") if not is_install_step(part.strip())]
        if parts:
            commands.append(" && ".join(part.strip() for part in parts))
    return commands


def command_words(text: str) -> Iterator[list[str]]:
    """Every simple command of a shell block as words, synopsis groups included (for checks)."""
    for line in logical_lines(text):
        line = re.sub(r"\s\[(--?[^\[\]]*)\]", r" \1", line).replace(".venv/bin/", "")
        with contextlib.suppress(ValueError):
            words = shlex.split(line, comments=True)
            command: list[str] = []
            for word in [*words, ";"]:
                if word in {"&&", ";", "|", "||"}:
                    if command:
                        yield command
                    command = []
                else:
                    command += word.split(";") if word.endswith(";") else [word]


def skip_reason(snippet: Snippet, command: str) -> str | None:
    """Why ``command`` of ``snippet`` is not run, or ``None``."""
    for need, prefix in snippet.skips:
        if prefix and command.startswith(prefix):
            return NEEDS.get(need, need)
    return None


def load_cli_reference() -> ModuleType:
    """The docs' CLI hook (``docs/hooks/cli_reference.py``): its program table and loader."""
    path = ROOT / "docs" / "hooks" / "cli_reference.py"
    spec = importlib.util.spec_from_file_location("dpnet_docs_cli_reference", path)
    assert spec is not None and spec.loader is not None
    if spec.name in sys.modules:
        return sys.modules[spec.name]
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def environment() -> dict[str, str]:
    """The environment the blocks run in: this interpreter's bin first on PATH, wide output."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "PATH": path, "COLUMNS": "160", "PYTHONUNBUFFERED": "1"}


def error_lines(output: str) -> list[str]:
    """Error lines in a command's output: dpnet's ``error: ...`` and the server's JSON errors."""
    return [line for line in output.splitlines() if line.startswith("error:") or '{"error"' in line]


def run_shell(snippet: Snippet, workspace: Path, url: str = DEFAULT_URL) -> list[str]:
    """Run a shell block's commands in ``workspace``; returns the commands it skipped (with
    why). Raises AssertionError naming the block and command that failed."""
    skipped = []
    for command in shell_commands(snippet.budgeted().replace(DEFAULT_URL, url)):
        reason = skip_reason(snippet, command)
        if reason is not None:
            skipped.append(f"{command!r} {reason}")
            continue
        done = subprocess.run(
            ["bash", "-o", "pipefail", "-c", command], cwd=workspace, env=environment(),
            capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        output = done.stdout + done.stderr
        if done.returncode != 0 or error_lines(output):
            raise AssertionError(
                f"{snippet.label}: {command!r} exited {done.returncode}:\n{output[-4000:]}"
            )
    return skipped


def run_python(snippet: Snippet, workspace: Path, url: str = DEFAULT_URL) -> None:
    """Run a Python block in this process, in ``workspace``, with its ``given`` variables."""
    names = " ".join(snippet.values("given")).split()
    unknown = sorted(set(names) - set(GIVEN))
    assert not unknown, f"{snippet.label}: given {unknown} are not in GIVEN"
    preamble = _GIVEN_HELPERS + "".join(f"{name} = {GIVEN[name]}\n" for name in names)
    code = snippet.budgeted().replace(DEFAULT_URL, url)
    namespace: dict[str, Any] = {"__name__": "__snippet__"}
    previous = Path.cwd()
    os.chdir(workspace)
    try:
        exec(compile(preamble, "<given>", "exec"), namespace)
        exec(compile(code, snippet.label, "exec"), namespace)
    finally:
        os.chdir(previous)


def run_page(snippets: list[Snippet], workspace: Path, url: str = DEFAULT_URL) -> list[str]:
    """Run a page's blocks in order in ``workspace``; returns what was skipped and why."""
    skipped = []
    for snippet in snippets:
        if not snippet.runnable:
            continue
        if (reason := snippet.whole_skip) is not None:
            skipped.append(f"{snippet.label} {reason}")
        elif snippet.language in SHELL:
            folder = ROOT if "in-repo" in snippet.directives else workspace
            skipped += [f"{snippet.label} {note}" for note in run_shell(snippet, folder, url)]
        else:
            run_python(snippet, workspace, url)
    return skipped


# --- the workspace -------------------------------------------------------------------------


def _save_rgb(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, quality=95)


def _save_mask(path: Path, label: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(((label == 1) * 255).astype(np.uint8)).save(path)


def build_workspace(root: Path, checkpoint: Path, export_dir: Path) -> Path:
    """Write the workspace every page's blocks start from (the module docstring lists it)."""
    from folder_data import SOURCE_CLASSES, class_name, write_folder_dataset

    from dpnet.data import build_dataset

    root.mkdir(parents=True, exist_ok=True)
    shutil.copy2(checkpoint, root / "model.pt")
    shutil.copytree(export_dir, root / "out")
    dataset = build_dataset(
        "synthetic", root=None, fold=0, split="val", shots=3, seed=7, episodes=8, image_size=160
    )
    first = dataset[0]
    for shot, (image, mask) in enumerate(
        zip(first.support_images, first.support_masks, strict=True), 1
    ):
        _save_rgb(root / f"cat{shot}.jpg", image)
        _save_mask(root / f"cat{shot}.png", mask)
        _save_mask(root / f"cat{shot}_mask.png", mask)
    shutil.copy2(root / "cat1.jpg", root / "cat.jpg")
    shutil.copy2(root / "cat1_mask.png", root / "cat_mask.png")
    shutil.copy2(root / "cat1.png", root / "cat.png")
    _save_rgb(root / "street.jpg", first.query_image)
    _save_rgb(root / "q.jpg", dataset[1].query_image)
    for index in range(2, 8):
        episode = dataset[index]
        folder, name = ("photos", f"photo{index}") if index < 5 else ("more", f"more{index}")
        _save_rgb(root / folder / f"{name}.jpg", episode.query_image)
        _save_mask(root / "truth" / f"{name}_mask.png", episode.query_mask)
    write_folder_dataset(root / "mine", images=3, size=96)
    for source, name in zip(SOURCE_CLASSES, ("cat", "dog", "bird", "fish"), strict=True):
        (root / "mine" / class_name(source)).rename(root / "mine" / name)
    return root


def _resnet50_weights(path: Path, _workspace: Path) -> None:
    import torch
    import torchvision

    torch.save(torchvision.models.resnet50().state_dict(), path)


def _voc_label_map(path: Path, workspace: Path) -> None:
    # cat1's object as class 8 (VOC's cat) in a palette PNG, with VOC's 255 outline around it.
    mask = Image.open(workspace / "cat1_mask.png").convert("L")
    objects = np.asarray(mask) > 127
    grown = np.asarray(mask.filter(ImageFilter.MaxFilter(5))) > 127
    label = np.where(objects, 8, 0).astype(np.uint8)
    label[grown & ~objects] = 255
    image = Image.fromarray(label, mode="P")
    image.putpalette([value for index in range(256) for value in (index, 0, 255 - index)])
    image.save(path)


def _copy(source: str) -> Callable[[Path, Path], None]:
    def copy(path: Path, workspace: Path) -> None:
        origin = workspace / source
        if origin.is_dir():
            shutil.copytree(origin, path)
        else:
            shutil.copy2(origin, path)

    return copy


FILES: dict[str, tuple[str, Callable[[Path, Path], None]]] = {
    "resnet50-0676ba61.pth": (
        "torchvision's ResNet-50 state dict (random weights, the ImageNet file's format)",
        _resnet50_weights,
    ),
    "run/best.pt": ("a copy of model.pt", _copy("model.pt")),
    "run-pascal/best.pt": ("a copy of model.pt", _copy("model.pt")),
    "demo/onnx/": ("a copy of out/, as dpnet-demo leaves it", _copy("out")),
    "2007_000123.jpg": ("a copy of cat1.jpg", _copy("cat1.jpg")),
    "2007_000123.png": ("cat1's mask as a VOC label map: class 8, a 255 outline", _voc_label_map),
}
"""Extra files a block may ask for (``files``): path -> (what it is, how it is made)."""


def page_workspace(template: Path, target: Path, snippets: list[Snippet]) -> Path:
    """A copy of the workspace for one page, with the ``files`` its blocks ask for."""
    shutil.copytree(template, target)
    for snippet in snippets:
        for name in " ".join(snippet.values("files")).split():
            assert name in FILES, f"{snippet.label}: files {name}: not in FILES"
            path = target / name
            path.parent.mkdir(parents=True, exist_ok=True)
            FILES[name][1](path, target)
    return target
