"""The blocks of the docs that talk to dpnet-serve, run against a real server on 127.0.0.1.

As ``tests/docs/test_snippets.py`` (the convention is in ``tests/docs_snippets.py``); a page
with a ``server`` block runs here with ``dpnet-serve --model out/`` of its workspace running,
its address standing for ``http://127.0.0.1:8000``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from docs_snippets import doc_pages, page_workspace, parse_page, run_page

from .conftest import start_server, stop_server

_PAGES = [page for page in doc_pages() if any(s.server for s in parse_page(page))]


def test_the_serve_page_has_server_blocks() -> None:
    assert [page.name for page in _PAGES] == ["serve.md"]


@pytest.mark.slow
@pytest.mark.parametrize("page", _PAGES, ids=lambda page: page.name)
def test_page_blocks_run_against_a_server(page: Path, docs_workspace: Path, tmp_path: Path) -> None:
    snippets = parse_page(page)
    workspace = page_workspace(docs_workspace, tmp_path / "workspace", snippets)
    server = start_server(workspace / "out")
    try:
        skipped = run_page(snippets, workspace, server.url)
    finally:
        stop_server(server)
    print("\n".join(["not run:", *skipped]) if skipped else "every block ran")
