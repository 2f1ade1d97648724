"""dpnet-serve deployed the way Ray Serve users deploy: the application builder Serve's CLI
calls, the config file ``dpnet-serve config`` writes (checked against Serve's schema, then run
with ``serve run`` on a Ray head of the test's own), the KubeRay example of the docs, and a
graceful drain on SIGTERM under load."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import yaml
from ray.serve.schema import ServeDeploySchema

from dpnet.data.episode import Episode
from dpnet_runtime import Predictor
from dpnet_runtime.errors import DpnetError, InputError
from dpnet_serve import Client
from dpnet_serve.options import TOKEN_ENV, ServeOptions, options_from_args

from .conftest import (
    assert_loopback_sockets,
    free_port,
    replica_pids,
    start_head,
    start_server,
    stop_server,
    support_masks,
    terminate_tree,
)

_DOCS = Path(__file__).resolve().parents[2] / "docs" / "serve.md"
_CLI = "from dpnet_serve.cli import main; main()"
TOKEN = "deploy-test-token-0123456789abcdef"


def _config_command(*args: str, **environment: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _CLI, "config", *args], capture_output=True, text=True,
        env={**os.environ, **environment}, timeout=300,
    )  # fmt: skip


def test_dpnet_serve_config_writes_a_serve_config_file(tmp_path: Path) -> None:
    store = tmp_path / "classes"
    done = _config_command(
        "--model", str(tmp_path), "--port", "8123", "--replicas", "2", "--max-replicas", "4",
        "--store", str(store), "--public-read", "--request-timeout-s", "30",
        **{TOKEN_ENV: TOKEN},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert TOKEN not in done.stdout  # the secret stays out of the file
    config = yaml.safe_load(done.stdout)
    schema = ServeDeploySchema.model_validate(config)  # what serve run / serve deploy accept
    assert schema.http_options.port == 8123 and schema.http_options.request_timeout_s == 32.0
    (application,) = config["applications"]
    assert application["import_path"] == "dpnet_serve.app:app"
    options = options_from_args(application["args"])
    assert options == ServeOptions(
        model=tmp_path, port=8123, replicas=2, max_replicas=4, store=store, public_read=True,
        request_timeout_s=30.0,
    )  # fmt: skip
    written = tmp_path / "serve.yaml"
    again = _config_command("--model", str(tmp_path), "--out", str(written))
    assert again.returncode == 0 and again.stdout == "", again.stderr
    assert yaml.safe_load(written.read_text())["applications"][0]["args"]["host"] == "127.0.0.1"
    usage = _config_command("--model", str(tmp_path), "--replicas", "0")
    assert usage.returncode == 2 and usage.stderr.startswith("error: replicas must be")
    # --out follows the CLI conventions: a YAML extension, and never an input.
    wrong_format = _config_command("--model", str(tmp_path), "--out", str(tmp_path / "s.json"))
    assert wrong_format.returncode == 2 and "name it .yaml or .yml" in wrong_format.stderr
    token_file = tmp_path / "token.yaml"
    token_file.write_text(TOKEN + "\n")
    over_input = _config_command(
        "--model", str(tmp_path / "m"), "--token-file", str(token_file), "--out", str(token_file)
    )
    assert over_input.returncode == 1 and "never writes over or into its inputs" in (
        over_input.stderr
    )
    assert token_file.read_text() == TOKEN + "\n"


def _kuberay_example() -> dict[str, Any]:
    text = _DOCS.read_text(encoding="utf-8")
    blocks = re.findall(r"```yaml\n(.*?)```", text, flags=re.DOTALL)
    services = [yaml.safe_load(block) for block in blocks if "kind: RayService" in block]
    assert len(services) == 1, "docs/serve.md should hold one RayService example"
    service: dict[str, Any] = services[0]
    return service


def test_the_kuberay_example_in_the_docs_parses() -> None:
    service = _kuberay_example()
    assert (service["apiVersion"], service["kind"]) == ("ray.io/v1", "RayService")
    config = yaml.safe_load(service["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(config)
    (application,) = config["applications"]
    assert application["import_path"] == "dpnet_serve.app:app"
    options = options_from_args(application["args"])
    assert options.autoscaling and options.host == "0.0.0.0"
    assert options.allowed_hosts != ServeOptions(model=options.model).allowed_hosts
    cluster = service["spec"]["rayClusterConfig"]
    containers = [cluster["headGroupSpec"]["template"]["spec"]["containers"][0]] + [
        group["template"]["spec"]["containers"][0] for group in cluster["workerGroupSpecs"]
    ]
    for container in containers:  # the token reaches wherever the builder may run
        assert TOKEN_ENV in [variable["name"] for variable in container["env"]]


@pytest.mark.slow
def test_the_builder_is_what_serve_run_calls(balanced_export_dir: Path) -> None:
    from ray.serve import Application
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
    from ray.serve._private.build_app import build_app

    from dpnet_serve.app import app

    # Strings, as `serve run dpnet_serve.app:app model=DIR replicas=2 ...` passes them.
    args = {"model": str(balanced_export_dir), "replicas": "2", "max-replicas": "3",
            "min_replicas": "1", "threads": "1", "max_queued_requests": "5"}  # fmt: skip
    application = call_user_app_builder_with_args_if_necessary(app, args)
    assert isinstance(application, Application)
    deployments = {d.name: d for d in build_app(application, name="dpnet").deployments}
    assert set(deployments) == {"Ingress", "QueryHead"}
    query = deployments["QueryHead"]
    scaling = query._deployment_config.autoscaling_config
    assert (scaling.min_replicas, scaling.initial_replicas, scaling.max_replicas) == (1, 2, 3)
    assert query.max_queued_requests == 5 and query.ray_actor_options["num_cpus"] == 1
    assert deployments["Ingress"].num_replicas == 1
    # One replica without autoscaling: the ingress runs the model on the replica's CPUs.
    alone = call_user_app_builder_with_args_if_necessary(
        app, {"model": str(balanced_export_dir), "threads": "2"}
    )
    (ingress,) = build_app(alone, name="dpnet").deployments
    assert ingress.name == "Ingress" and ingress.ray_actor_options["num_cpus"] == 2
    with pytest.raises(InputError, match="needs model=DIR"):
        app({"replicas": "2"})
    with pytest.raises(InputError, match=r"refusing to serve 0\.0\.0\.0 without a token"):
        app({"model": str(balanced_export_dir), "host": "0.0.0.0"})


@pytest.mark.slow
def test_serve_run_runs_the_generated_config(
    balanced_export_dir: Path, predictor: Predictor, episodes: list[Episode], tmp_path: Path
) -> None:
    port = free_port()
    config = tmp_path / "serve.yaml"
    done = _config_command(
        "--model", str(balanced_export_dir), "--port", str(port), "--threads", "1",
        "--public-read", "--out", str(config),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    # The builder runs in the cluster: the token is the head's environment, not the file's.
    head = start_head({TOKEN_ENV: TOKEN})
    driver_dir = tempfile.mkdtemp(prefix="dpd", dir="/tmp")  # short: Ray's socket paths
    try:
        serve_cli = [sys.executable, "-m", "ray.serve.scripts", "run", str(config),
                     "--address", head.address, "--non-blocking"]  # fmt: skip
        # Its own Ray folder, as every driver of the tests: /tmp/ray may hold other sessions.
        driver = {"RAY_TMPDIR": driver_dir, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
                  "RAY_USAGE_STATS_ENABLED": "0", **head.token}  # fmt: skip
        deployed = subprocess.run(
            serve_cli, capture_output=True, text=True, timeout=600, env={**os.environ, **driver}
        )
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        url = f"http://127.0.0.1:{port}"
        with Client(url, timeout_s=120) as anonymous, Client(url, token=TOKEN) as writer:
            deadline = time.monotonic() + 300
            while not anonymous.ready() and time.monotonic() < deadline:
                time.sleep(1)
            episode = episodes[0]
            with pytest.raises(InputError, match="HTTP 401"):  # writes need the token
                anonymous.register("cat", list(episode.support_images), support_masks(episode))
            writer.register("cat", list(episode.support_images), support_masks(episode))
            support = predictor.encode_support(list(episode.support_images), support_masks(episode))
            for query in [e.query_image for e in episodes]:  # --public-read: queries need none
                want = predictor.segment(query, support).mask
                np.testing.assert_array_equal(anonymous.segment("cat", query), want)
        assert replica_pids(head.processes(), "Ingress")  # one replica: it runs the model
        assert_loopback_sockets(head.processes())
    finally:
        terminate_tree(head.process, head.ray_dir)
        shutil.rmtree(driver_dir, ignore_errors=True)


@pytest.mark.slow
def test_sigterm_drains_under_load(
    balanced_export_dir: Path, predictor: Predictor, episodes: list[Episode]
) -> None:
    server = start_server(balanced_export_dir, "--threads", "1", "--drain-timeout-s", "30")
    try:
        episode = episodes[0]
        queries = [e.query_image for e in episodes]
        support = predictor.encode_support(list(episode.support_images), support_masks(episode))
        expected = [predictor.segment(query, support).mask for query in queries]
        with Client(server.url, timeout_s=120) as client:
            client.register("cat", list(episode.support_images), support_masks(episode))
        outcomes: list[str] = []
        started = threading.Barrier(9)

        def load(thread: int) -> None:
            with Client(server.url, timeout_s=120) as own:
                started.wait()
                for index in range(200):  # bounded; a client stops at its first refusal
                    query = (thread + index) % len(queries)
                    try:
                        mask = own.segment("cat", queries[query])
                    except InputError as exc:
                        outcomes.append(f"4xx {exc}")
                        return
                    except DpnetError as exc:
                        outcomes.append("draining" if "[draining]" in str(exc) else str(exc))
                        return
                    outcomes.append("ok" if np.array_equal(mask, expected[query]) else "wrong")

        threads = [threading.Thread(target=load, args=(thread,)) for thread in range(8)]
        for thread in threads:
            thread.start()
        started.wait()
        time.sleep(2.0)
        server.process.send_signal(signal.SIGTERM)
        for thread in threads:
            thread.join(timeout=300)
        code = server.process.wait(timeout=120)
    finally:
        stop_server(server)
    assert code == 0, "".join(server.lines[-30:])
    assert "draining\n" in server.lines and "stopping\n" in server.lines
    others = [outcome for outcome in outcomes if outcome not in ("ok", "draining")]
    assert others == [] and outcomes.count("draining") == 8, others or outcomes[-10:]
    assert outcomes.count("ok") > 8
    with pytest.raises(requests.ConnectionError):  # gone once drained
        requests.get(f"{server.url}/healthz", timeout=10)
