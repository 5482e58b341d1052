"""What the test asserts, as plain functions of plain data (`docker inspect` JSON, a command's
output, the runs read from MLflow): each returns what it found or raises Failed naming the
problem. No Docker here; tests/test_deploy_imagetest.py feeds them good and bad data."""
from __future__ import annotations

from collections import Counter

NEED_FREE_GB = 20              # the sweep image (~7 GB) plus BuildKit's cache of pip's wheels
SWEEP_IMAGE_USER = "1000:100"  # the base image's user ray, group users
NOTHING_TO_RUN = "nothing to run: every trial is FINISHED in MLflow."


class Failed(Exception):
    """A check or a step failed; the message names the problem and, where there is one, the fix."""


# --- the tools and the engine ------------------------------------------------------------

def check_client(path: str, version: str, has_buildx: bool) -> None:
    """A docker client of 23.x or newer builds with BuildKit only through buildx."""
    major = int(version.split(".")[0]) if version[:1].isdigit() else 0
    if major >= 23 and not has_buildx:
        raise Failed(f"the docker client on PATH ({path}, {version}) has no buildx, so it cannot "
                     "build with BuildKit. Install Debian's client (apt-get install docker.io: "
                     "/usr/bin/docker) or the buildx plugin.")


def check_free_disk(free_bytes: int, root: str) -> None:
    free_gb = free_bytes // 10**9
    if free_gb < NEED_FREE_GB:
        raise Failed(f"only {free_gb} GB free under {root}; the builds need about {NEED_FREE_GB} GB "
                     "(the sweep image is ~7 GB, plus BuildKit's cache of pip's wheels). Free some: "
                     "docker image prune; docker builder prune")


def earlier_projects(labels: list[str], prefix: str) -> list[str]:
    """The compose projects of earlier runs of this test among the containers' project labels."""
    return sorted({label for label in labels if label.startswith(prefix)})


# --- the compose file and the images -------------------------------------------------------

def drop_gpu_reservation(doc: dict) -> list[dict]:
    """Remove the ray-worker's NVIDIA device reservation from a merged compose file, in
    place, and the sections it leaves empty; return what was removed. Any other device
    reservation is an error: the test would run something compose.yaml does not."""
    worker = doc["services"]["ray-worker"]
    deploy = worker.get("deploy", {})
    reservations = deploy.get("resources", {}).get("reservations", {})
    devices = reservations.pop("devices", [])
    drivers = [d.get("driver") for d in devices]
    if devices and drivers != ["nvidia"]:
        raise Failed(f"the worker reserves devices {devices}; expected one NVIDIA reservation")
    if devices:
        if not reservations:
            del deploy["resources"]["reservations"]
        if not deploy["resources"]:
            del deploy["resources"]
        if not deploy:
            del worker["deploy"]
    left = [name for name, s in doc["services"].items() if "devices" in str(s.get("deploy", ""))]
    if left:
        raise Failed(f"device reservations left on {left}: there is no GPU here")
    return devices


def check_sweep_image(tag: str, config: dict, git_commit: str) -> None:
    """The sweep image's config (`docker image inspect`'s Config): the commit and the user."""
    env = dict(e.split("=", 1) for e in config.get("Env") or [])
    if env.get("GIT_COMMIT") != git_commit:
        raise Failed(f"{tag} has GIT_COMMIT={env.get('GIT_COMMIT')!r} in its environment, expected "
                     f"{git_commit!r}: check compose.yaml's build args")
    if config.get("User") != SWEEP_IMAGE_USER:
        raise Failed(f"{tag} runs as {config.get('User')!r}, expected {SWEEP_IMAGE_USER}")


# --- the running project -------------------------------------------------------------------

def start_order(services: dict) -> list[str]:
    """The services `up` starts (those without a profile), each after those it depends on."""
    order = []

    def visit(name: str) -> None:
        if name not in order:
            for dependency in services[name].get("depends_on", {}):
                visit(dependency)
            order.append(name)
    for name in sorted(services):
        if not services[name].get("profiles"):
            visit(name)
    return order


def service_healthy(service: str, container: dict) -> bool:
    """True once a container (`docker inspect` JSON) is running and healthy, False while it
    starts; Failed if it crashed, exited, is unhealthy or has no health check."""
    state = container["State"]
    health = (state.get("Health") or {}).get("Status")
    if container.get("RestartCount", 0):
        raise Failed(f"service {service} crashed and was restarted (its logs follow)")
    if state["Status"] in ("exited", "dead"):
        raise Failed(f"service {service} {state['Status']} (its logs follow)")
    if health is None:
        raise Failed(f"service {service} has no health check")
    if health == "unhealthy":
        raise Failed(f"service {service} is unhealthy (its logs and health check output follow)")
    return state["Status"] == "running" and health == "healthy"


def container_ip(container: dict) -> str:
    """A container's address on its network(s), from `docker inspect`."""
    return "".join(n["IPAddress"] for n in container["NetworkSettings"]["Networks"].values())


def worker_node(nodes: list[dict], worker_ip: str) -> str:
    """The Ray node id of the one live node at the worker's address ({'id', 'ip', 'alive'})."""
    found = [n for n in nodes if n["alive"] and n["ip"] == worker_ip]
    if len(found) != 1:
        raise Failed(f"the Ray cluster has {len(found)} live nodes at the worker's address "
                     f"{worker_ip}, expected 1: {nodes}")
    return found[0]["id"]


def read_plan(plan_output: str) -> tuple[str, int]:
    """The sweep's name and its number of trials, as `orchestrator plan` prints them
    ("sweep NAME: description" then "N trials, tracking URI")."""
    name = n_trials = None
    for line in plan_output.splitlines():
        if line.startswith("sweep ") and ":" in line and name is None:
            name = line[len("sweep "):].split(":", 1)[0]
        head, sep, _ = line.partition(" trials, tracking")
        if sep and head.isdigit() and n_trials is None:
            n_trials = int(head)
    if name is None or n_trials is None:
        raise Failed(f"could not read the sweep's name and number of trials from "
                     f"`orchestrator plan`:\n{plan_output}")
    return name, n_trials


def check_launched_nothing(output: str) -> None:
    """The second run of the sweep must say that it has nothing to run."""
    if NOTHING_TO_RUN not in output:
        raise Failed(f"the second run did not say {NOTHING_TO_RUN!r}")


def check_nothing_left(project: str, left: dict[str, list[str]]) -> None:
    """After the teardown: no container, network or volume labelled with the project."""
    found = {kind: ids for kind, ids in left.items() if ids}
    if found:
        n = sum(len(ids) for ids in found.values())
        raise Failed(f"{n} containers/networks/volumes of {project} are left: {found}")


# --- MLflow -----------------------------------------------------------------------------

def check_mlflow_runs(store: dict, expected_tags: dict[str, str], n_trials: int) -> list[str]:
    """Every trial: one run, FINISHED, with metrics, a downloadable artifact and the expected
    tags (sweep, git_commit, host, node_ip, ray_node_id). `store` is read_mlflow.py's output:
    {'experiment': name or None, 'runs': [{'name', 'status', 'tags', 'metrics', 'artifacts',
    'download_error'}]}. Returns a line per run and a summary; Failed lists every problem."""
    if store["experiment"] is None:
        raise Failed(f"no experiment {expected_tags['sweep']!r} in the MLflow server")
    runs = [r for r in store["runs"] if "cell_key" not in r["tags"]]   # a cell's parent is no trial
    keys = Counter(r["tags"].get("trial_key") for r in runs)
    problems, wrong = [], Counter()
    if None in keys:
        problems.append(f"{keys[None]} run(s) without a trial_key tag")
    if len(keys) != n_trials:
        problems.append(f"{len(keys)} trial keys in MLflow, expected {n_trials}")
    problems += [f"trial {k}: {n} runs" for k, n in keys.items() if k and n > 1]
    lines = []
    for r in runs:
        tags = r["tags"]
        name = f"run {r['name']} ({tags.get('trial_key')})"
        if r["status"] != "FINISHED":
            problems.append(f"{name}: status {r['status']}")
        if not r["metrics"]:
            problems.append(f"{name}: no metrics")
        if r["artifacts"] and r["download_error"]:
            problems.append(f"{name}: artifact {r['artifacts'][0]} listed but not downloadable: "
                            f"{r['download_error']}")
        for tag, want in expected_tags.items():
            if tags.get(tag) != want:
                wrong[f"{tag}={tags.get(tag)!r}, expected {want!r}"] += 1
        lines.append(f"{r['name']:<28} {tags.get('trial_key')}  {r['status']}  host={tags.get('host')}"
                     f"  git_commit={tags.get('git_commit', '')[:12]}  metrics={r['metrics']}"
                     f"  artifacts={len(r['artifacts'])}")
    problems += [f"{n} of {len(runs)} runs: {what}" for what, n in wrong.items()]
    if problems:
        raise Failed("the MLflow runs are not what the sweep should leave:\n  " + "\n  ".join(problems))
    n_artifacts = sum(len(r["artifacts"]) for r in runs)
    lines.append(f"{len(runs)} runs, one per trial, all FINISHED on the worker, each with "
                 f"git_commit={expected_tags['git_commit']}; {n_artifacts} artifacts, read back "
                 f"through the server; {len(store['runs']) - len(runs)} cell run(s) above them")
    return lines
