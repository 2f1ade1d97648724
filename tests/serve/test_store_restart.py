"""dpnet-serve --store DIR: classes survive a restart with identical results, and SIGTERM
stops the server and every process it started."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dpnet.data.episode import Episode
from dpnet_serve import Client

from .conftest import Server, start_server, stop_server, support_masks

pytestmark = pytest.mark.slow


def _segment_all(server: Server, queries: list[np.ndarray]) -> dict[str, list[np.ndarray]]:
    with Client(server.url, timeout_s=120) as client:
        return {name: [client.segment(name, query) for query in queries] for name in ("cat", "dog")}


def test_classes_survive_a_restart_with_identical_masks(
    balanced_export_dir: Path,
    episodes: list[Episode],
    tmp_path: Path,
    stopped_servers: list[Server],
) -> None:
    store = tmp_path / "store"
    options = ("--store", str(store), "--threads", "1")
    queries = [episode.query_image for episode in episodes]
    first = start_server(balanced_export_dir, *options)
    stopped_servers.append(first)
    with Client(first.url, timeout_s=120) as client:
        cat = client.register("cat", list(episodes[0].support_images), support_masks(episodes[0]))
        dog = client.register(
            "dog", list(episodes[1].support_images[:1]), support_masks(episodes[1])[:1]
        )
    before = _segment_all(first, queries)
    started = first.processes()[1:]
    assert stop_server(first) == 0
    assert "stopping\n" in first.lines
    assert not [process for process in started if process.is_running()]  # stopped with it
    index = json.loads((store / "index.json").read_text())
    assert [entry["name"] for entry in index["classes"]] == ["cat", "dog"]
    assert sorted(path.name for path in store.glob("*.npz")) == sorted(
        [f"{cat.key}.npz", f"{dog.key}.npz"]
    )

    second = start_server(balanced_export_dir, *options)
    stopped_servers.append(second)
    with Client(second.url, timeout_s=120) as client:
        assert client.classes() == [cat, dog]
        after = _segment_all(second, queries)
        stats = client.stats()
    for name in ("cat", "dog"):
        for got, want in zip(after[name], before[name], strict=True):
            np.testing.assert_array_equal(got, want)
    assert stats["support_graph_runs"] == 0  # restored from the store, never re-encoded
