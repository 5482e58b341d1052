"""The image test's checks (docker/imagetest/checks.py) on good and bad data, its CLI and its
stand-in bases' files. No Docker engine: the end-to-end itself is `bash docker/test-image.sh`."""
from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys

import pytest

from deploy_files import DOCKER, compose
from imagetest import checks, dockerfile, standins
from imagetest.checks import Failed

COMMIT = "0123456789abcdef0123456789abcdef01234567"
EXPECTED = {"sweep": "smoke", "git_commit": COMMIT, "host": "c0ffee123456", "node_ip": "172.18.0.5",
            "ray_node_id": "a1b2c3"}


def run(name: str, trial: str | None, **change) -> dict:
    """One trial's run as read_mlflow.py prints it, as the worker leaves it; `change` sets a
    field or a tag (None: no such tag)."""
    tags = {"trial_key": trial, **EXPECTED} if trial else dict(EXPECTED)
    r = {"name": name, "status": "FINISHED", "tags": tags, "metrics": 12,
         "artifacts": ["trial.json", "timeline.json"], "download_error": None}
    for key, value in change.items():
        if key in r:
            r[key] = value
        elif value is None:
            del r["tags"][key]
        else:
            r["tags"][key] = value
    return r


def store(*runs: dict) -> dict:
    return {"experiment": "smoke", "runs": list(runs)}


GOOD = store(run("smoke-a", "k1"), run("smoke-b", "k2"), run("smoke-c", "k3"),
             {"name": "cell", "status": "FINISHED", "tags": {"cell_key": "c1"}, "metrics": 0,
              "artifacts": [], "download_error": None})


# --- MLflow ------------------------------------------------------------------------------

def test_mlflow_runs_good():
    lines = checks.check_mlflow_runs(copy.deepcopy(GOOD), EXPECTED, 3)
    assert len(lines) == 4
    assert lines[0].split()[:3] == ["smoke-a", "k1", "FINISHED"]
    assert "host=c0ffee123456" in lines[0] and "git_commit=0123456789ab " in lines[0]
    assert "metrics=12" in lines[0] and lines[0].endswith("artifacts=2")
    assert lines[-1] == (f"3 runs, one per trial, all FINISHED on the worker, each with git_commit={COMMIT}; "
                         "6 artifacts, read back through the server; 1 cell run(s) above them")


BAD = {   # name: (the runs, one line the failure must hold)
    "not finished": (store(run("a", "k1"), run("b", "k2", status="FAILED"), run("c", "k3")),
                     "run b (k2): status FAILED"),
    "wrong host": (store(run("a", "k1", host="head"), run("b", "k2"), run("c", "k3", host="head")),
                   "2 of 3 runs: host='head', expected 'c0ffee123456'"),
    "wrong commit": (store(run("a", "k1", git_commit="unknown"), run("b", "k2"), run("c", "k3")),
                     f"1 of 3 runs: git_commit='unknown', expected '{COMMIT}'"),
    "no node id": (store(run("a", "k1", ray_node_id=None), run("b", "k2"), run("c", "k3")),
                   "1 of 3 runs: ray_node_id=None, expected 'a1b2c3'"),
    "wrong node ip": (store(run("a", "k1", node_ip="172.18.0.4"), run("b", "k2"), run("c", "k3")),
                      "1 of 3 runs: node_ip='172.18.0.4', expected '172.18.0.5'"),
    "another sweep": (store(run("a", "k1", sweep="table1"), run("b", "k2"), run("c", "k3")),
                      "1 of 3 runs: sweep='table1', expected 'smoke'"),
    "a trial missing": (store(run("a", "k1"), run("b", "k2")), "2 trial keys in MLflow, expected 3"),
    "a trial run twice": (store(run("a", "k1"), run("b", "k2"), run("c", "k3"), run("b2", "k2")),
                          "trial k2: 2 runs"),
    "no trial key": (store(run("a", "k1"), run("b", "k2"), run("c", "k3"), run("x", None)),
                     "1 run(s) without a trial_key tag"),
    "no metrics": (store(run("a", "k1"), run("b", "k2", metrics=0), run("c", "k3")), "run b (k2): no metrics"),
    "artifact not served": (store(run("a", "k1", download_error="HTTPError: 503"), run("b", "k2"), run("c", "k3")),
                            "run a (k1): artifact trial.json listed but not downloadable: HTTPError: 503"),
}


@pytest.mark.parametrize("case", BAD)
def test_mlflow_runs_bad(case):
    data, problem = BAD[case]
    with pytest.raises(Failed) as e:
        checks.check_mlflow_runs(data, EXPECTED, 3)
    lines = [line.strip() for line in str(e.value).splitlines()]
    assert lines[0] == "the MLflow runs are not what the sweep should leave:"
    assert problem in lines[1:], lines


def test_mlflow_runs_lists_every_problem():
    data = store(run("a", "k1", status="RUNNING", host="head"), run("b", "k2", git_commit="x"))
    with pytest.raises(Failed) as e:
        checks.check_mlflow_runs(data, EXPECTED, 3)
    assert str(e.value).splitlines()[1:] == [
        "  2 trial keys in MLflow, expected 3", "  run a (k1): status RUNNING",
        "  1 of 2 runs: host='head', expected 'c0ffee123456'",
        f"  1 of 2 runs: git_commit='x', expected '{COMMIT}'"]


def test_mlflow_runs_no_experiment():
    with pytest.raises(Failed, match="^no experiment 'smoke' in the MLflow server$"):
        checks.check_mlflow_runs({"experiment": None, "runs": []}, EXPECTED, 3)


# --- the sweep's output ----------------------------------------------------------------

def test_read_plan():
    out = ("sweep smoke: A tiny sweep: 2 epochs on generated data.\n"
           "3 trials, tracking http://mlflow:5000\n\ntrial   key  state\n")
    assert checks.read_plan(out) == ("smoke", 3)
    with pytest.raises(Failed, match="could not read the sweep's name and number of trials"):
        checks.read_plan("sweep smoke: no count here\n")


def test_second_run_must_launch_nothing():
    checks.check_launched_nothing("2026 ray started\nnothing to run: every trial is FINISHED in MLflow.\n")
    with pytest.raises(Failed, match="the second run did not say 'nothing to run: every trial is FINISHED"):
        checks.check_launched_nothing("3 trials to run\nlaunching 3 trials\n")
    with pytest.raises(Failed):   # another run finishing them is not this run launching nothing
        checks.check_launched_nothing("nothing to run: every trial is FINISHED in MLflow (another run finished them).")


# --- the cluster -------------------------------------------------------------------------

NODES = [{"id": "head", "ip": "172.18.0.4", "alive": True, "cpu": 0},
         {"id": "a1b2c3", "ip": "172.18.0.5", "alive": True, "cpu": 2},
         {"id": "gone", "ip": "172.18.0.5", "alive": False, "cpu": 2}]


def test_worker_node():
    assert checks.worker_node(NODES, "172.18.0.5") == "a1b2c3"
    with pytest.raises(Failed, match="has 0 live nodes at the worker's address 172.18.0.9, expected 1"):
        checks.worker_node(NODES, "172.18.0.9")
    twice = NODES + [{"id": "again", "ip": "172.18.0.5", "alive": True, "cpu": 2}]
    with pytest.raises(Failed, match="has 2 live nodes"):
        checks.worker_node(twice, "172.18.0.5")


def test_start_order_is_compose_yamls_without_the_driver():
    assert checks.start_order(compose()["services"]) == ["postgres", "mlflow", "ray-head", "ray-worker"]
    services = {"b": {"depends_on": ["c"]}, "a": {"depends_on": {"b": {}}}, "c": {}, "d": {"profiles": ["x"]}}
    assert checks.start_order(services) == ["c", "b", "a"]


def container(status="running", health="healthy", restarts=0) -> dict:
    """`docker inspect` of a container, the parts the checks read."""
    state = {"Status": status, **({"Health": {"Status": health}} if health else {})}
    return {"State": state, "RestartCount": restarts,
            "NetworkSettings": {"Networks": {"p_default": {"IPAddress": "172.18.0.5"}}}}


def test_service_healthy():
    assert checks.service_healthy("mlflow", container()) is True
    assert checks.service_healthy("mlflow", container(health="starting")) is False
    assert checks.container_ip(container()) == "172.18.0.5"
    for state, message in ((container(health="unhealthy"), "service mlflow is unhealthy"),
                           (container(status="exited", health="unhealthy"), "service mlflow exited"),
                           (container(restarts=1), "service mlflow crashed and was restarted"),
                           (container(health=None), "service mlflow has no health check")):
        with pytest.raises(Failed, match=message):
            checks.service_healthy("mlflow", state)


def test_nothing_left():
    checks.check_nothing_left("p", {"containers": [], "networks": [], "volumes": []})
    with pytest.raises(Failed, match=r"^3 containers/networks/volumes of p are left: "
                                     r"\{'containers': \['c1', 'c2'\], 'volumes': \['v1'\]\}$"):
        checks.check_nothing_left("p", {"containers": ["c1", "c2"], "networks": [], "volumes": ["v1"]})


def test_earlier_projects():
    labels = ["manifold-imgtest-1-9", "", "other", "manifold-imgtest-1-9", "manifold-imgtest-2-3"]
    assert checks.earlier_projects(labels, "manifold-imgtest-") == ["manifold-imgtest-1-9", "manifold-imgtest-2-3"]


# --- the tools, the disk, the images ----------------------------------------------------

def test_client_needs_buildx_from_23():
    checks.check_client("/usr/bin/docker", "20.10.24+dfsg1", has_buildx=False)
    checks.check_client("/usr/local/bin/docker", "28.1.1", has_buildx=True)
    with pytest.raises(Failed, match=r"/usr/local/bin/docker, 28.1.1\) has no buildx"):
        checks.check_client("/usr/local/bin/docker", "28.1.1", has_buildx=False)


def test_free_disk():
    checks.check_free_disk(20 * 10**9, "/var/lib/docker")
    with pytest.raises(Failed, match="^only 19 GB free under /var/lib/docker; the builds need about 20 GB"):
        checks.check_free_disk(20 * 10**9 - 1, "/var/lib/docker")


def test_sweep_image():
    good = {"Env": ["PATH=/usr/bin", f"GIT_COMMIT={COMMIT}"], "User": "1000:100"}
    checks.check_sweep_image("img", good, COMMIT)
    with pytest.raises(Failed, match="img has GIT_COMMIT='unknown' in its environment"):
        checks.check_sweep_image("img", {**good, "Env": ["GIT_COMMIT=unknown"]}, COMMIT)
    with pytest.raises(Failed, match="img runs as 'ray', expected 1000:100"):
        checks.check_sweep_image("img", {**good, "User": "ray"}, COMMIT)


def test_drop_gpu_reservation_of_compose_yaml():
    doc = compose()
    devices = checks.drop_gpu_reservation(doc)
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    assert "deploy" not in doc["services"]["ray-worker"]      # nothing else was reserved
    original = compose()
    del original["services"]["ray-worker"]["deploy"]
    assert doc == original                                    # and nothing else changed
    assert checks.drop_gpu_reservation(doc) == []             # a file without one is left alone


def test_drop_gpu_reservation_refuses_what_it_does_not_know():
    doc = compose()
    doc["services"]["ray-worker"]["deploy"]["resources"]["reservations"]["devices"][0]["driver"] = "amd"
    with pytest.raises(Failed, match="the worker reserves devices .*'amd'"):
        checks.drop_gpu_reservation(doc)
    doc = compose()
    doc["services"]["ray-head"]["deploy"] = copy.deepcopy(doc["services"]["ray-worker"]["deploy"])
    with pytest.raises(Failed, match=r"device reservations left on \['ray-head'\]"):
        checks.drop_gpu_reservation(doc)


# --- the CLI and the stand-ins ----------------------------------------------------------

def test_cli_help_says_what_it_proves_and_its_options():
    out = subprocess.run([sys.executable, "-m", "imagetest", "--help"], cwd=DOCKER,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for text in ("--remove-images", "--rebuild-standins", "--prune-build-cache", "KEEP_DOCKERD",
                 "BUILD_TIMEOUT", "What it does not prove"):
        assert text in out.stdout
    bad = subprocess.run([sys.executable, "-m", "imagetest", "--no-such-option"], cwd=DOCKER,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "unrecognized arguments: --no-such-option" in bad.stderr


def test_wrapper_script_runs_the_cli():
    """docker/test-image.sh (the README's command) only hands its arguments to the package."""
    script = DOCKER / "test-image.sh"
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in text
    assert text.rstrip().endswith('exec "$PYTHON" -m imagetest "$@"')
    if shutil.which("shellcheck"):
        lint = subprocess.run(["shellcheck", "-S", "warning", str(script)], capture_output=True, text=True, timeout=60)
        assert lint.returncode == 0, lint.stdout
    out = subprocess.run(["bash", str(script), "--help"], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHON": sys.executable})
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: docker/test-image.sh [-h] [--remove-images]")


def test_standin_images_exist_for_every_name():
    names = standins.names(dockerfile.args()["RAY_VERSION"])
    assert names["ray"] == f"manifold-standin/ray:{dockerfile.args()['RAY_VERSION']}"
    for name in names:
        stages = dockerfile.stages(standins.HERE / "standin-images" / name / "Dockerfile")
        assert [s["from"] for s in stages] == ["${DEBIAN}"], name
    entrypoint = standins.HERE / "standin-images" / "postgres" / "docker-entrypoint.sh"
    assert os.access(entrypoint, os.X_OK), f"{entrypoint} must be executable (the image runs it)"


def test_dockerfile_parser(tmp_path):
    """The one parser of docker/Dockerfile: continuations, comments inside them, ARGs."""
    path = tmp_path / "Dockerfile"
    path.write_text("# a comment\nARG V=1.2\nARG BASE=img:${V}\nFROM ${BASE} AS one\nARG V\n"
                    "RUN a \\\n    # inside\n    && b\narg LATE\nFROM --platform=x two\n")
    assert dockerfile.args(path) == {"V": "1.2", "BASE": "img:${V}", "LATE": None}
    stages = dockerfile.stages(path)
    assert [(s["from"], s["name"]) for s in stages] == [("${BASE}", "one"), ("two", None)]
    assert stages[0]["instructions"] == [("ARG", "V"), ("RUN", "a      && b"), ("ARG", "LATE")]
    assert dockerfile.stage_base(stages[0], path) == "img:${V}"
