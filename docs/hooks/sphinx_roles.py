"""Griffe extension: dpnet's docstrings as the site shows them (Sphinx roles, doctest examples).

The docstrings are Google style with Sphinx roles for references (``:func:`~pkg.mod.name```,
``:class:`Predictor```), which the terminal and IDEs show as they are. In the site each role
becomes an optional autorefs link: a link where the target is documented on a page, plain code
where it is not (no warning: most private helpers are not on any page). A target without a
package prefix is looked up in the docstring's own module (``:meth:`~Predictor.segment```).

Doctest examples (``>>>`` lines and the output after them) stand in the docstrings' text rather
than in an ``Examples:`` section; each run of them becomes a ``pycon`` code block, so markdown
does not read ``x[1]["prototypes"]`` as a link.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

__all__ = ["SphinxRoles"]

_ROLE = re.compile(
    r":(?:func|meth|class|mod|data|attr|exc|obj|const):`(?P<tilde>~?)(?P<target>[^`]+)`"
)
_PACKAGES = ("dpnet", "dpnet_runtime", "dpnet_export", "dpnet_bench", "dpnet_serve")


class SphinxRoles(griffe.Extension):
    """Rewrite ``:role:`target``` in every docstring to an optional ``<autoref>``."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        """Rewrite the roles of one object's docstring."""
        if obj.docstring is None:
            return
        module = obj.module.path if not obj.is_module else obj.path
        text = _fence_doctests(obj.docstring.value)
        obj.docstring.value = _ROLE.sub(lambda match: _autoref(match, module), text)


def _fence_doctests(text: str) -> str:
    lines, out, index = text.splitlines(), [], 0
    while index < len(lines):
        line = lines[index]
        if not line.lstrip().startswith(">>>"):
            out.append(line)
            index += 1
            continue
        indent = line[: len(line) - len(line.lstrip())]
        block = []
        while index < len(lines) and lines[index].strip():
            block.append(lines[index].removeprefix(indent))
            index += 1
        out += [f"{indent}```pycon", *(indent + row for row in block), f"{indent}```"]
    return "\n".join(out)


def _autoref(match: re.Match[str], module: str) -> str:
    target = match["target"].lstrip(".")
    title = target.rsplit(".", 1)[-1] if match["tilde"] else target
    if not target.startswith(tuple(f"{package}." for package in _PACKAGES)) and (
        target not in _PACKAGES
    ):
        target = f"{module}.{target}"
    return f'<autoref identifier="{target}" optional><code>{title}</code></autoref>'
