"""`python3 -m imagetest` (from docker/; docker/test-image.sh runs it): the steps of the test, in
order, then the teardown. What each step asserts is in checks.py; see --help."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from . import __doc__ as ABOUT, checks, dockerfile, engine, standins
from .checks import Failed
from .engine import info, step

DOCKER = Path(__file__).resolve().parents[1]
ROOT = DOCKER.parent
SWEEP_IMAGE = "manifold-sweeps:standin-test"
MLFLOW_IMAGE = "manifold-mlflow:standin-test"
PROJECT_PREFIX = "manifold-imgtest-"     # + a timestamp and pid: the compose project of one run
SWEEP = "sweeps/smoke.yaml"
RAY_NODES = """import json, ray
ray.init(address="auto", logging_level="ERROR")
print(json.dumps([{"id": n["NodeID"], "ip": n["NodeManagerAddress"], "alive": n["Alive"],
                   "cpu": n["Resources"].get("CPU", 0)} for n in ray.nodes()]))"""


def setting(name: str, default: int) -> int:
    """A limit in seconds from the environment."""
    value = os.environ.get(name, str(default))
    if not value.isdigit():
        raise Failed(f"{name}={value!r}: expected a number of seconds (default {default})")
    return int(value)


@dataclass
class Run:
    """What this run of the test started and measured, for the steps and the teardown."""
    opts: argparse.Namespace
    logs: Path
    build_timeout: int = 0      # s, per target: BUILD_TIMEOUT
    health_timeout: int = 0     # s, until all services are healthy: HEALTH_TIMEOUT
    run_timeout: int = 0        # s, per run of the sweep: RUN_TIMEOUT
    project: engine.Project | None = None                  # set once `up` starts
    dockerd: subprocess.Popen | None = None                # the dockerd this test started
    timings: list[str] = field(default_factory=list)

    def timing(self, what: str, value: str) -> None:
        self.timings.append(f"{what:<40} {value}")


def secs(seconds: float) -> str:
    s = round(seconds)
    return f"{engine.clock(s)} ({s} s)"


def tools_and_engine(run: Run) -> None:
    step("checking the tools (Docker engine, docker-compose, debootstrap)")
    missing = engine.missing_tools()
    if missing:
        info(f"apt-get install {' '.join(missing)}")
        engine.apt_install(missing, run.logs / "apt.log")
    client, version = shutil.which("docker"), engine.output("docker", "--version").split()[2].rstrip(",")
    info(f"docker client: {client} ({version})")
    info(f"docker-compose: {engine.output('docker-compose', 'version', '--short')}")
    checks.check_client(client, version, engine.answers("docker", "buildx", "version"))

    step("checking the Docker engine")
    if not engine.answers("docker", "info"):
        info(f"no engine answers: starting dockerd in the background (log: {run.logs / 'dockerd.log'})")
        run.dockerd = engine.start_dockerd(run.logs / "dockerd.log")
    about = json.loads(engine.output("docker", "info", "-f", "{{json .}}"))
    info(f"engine {about['ServerVersion']}, storage {about['Driver']}, root {about['DockerRootDir']}")
    labels = engine.output("docker", "ps", "-a", "--format", '{{.Label "%s"}}' % engine.PROJECT_LABEL)
    for p in checks.earlier_projects(labels.split(), PROJECT_PREFIX):
        info(f"warning: containers of an earlier run {p} are still there (a run in progress, or one killed")
        info("  before its teardown); if none is running, remove them with:")
        info(f"  docker rm -f $(docker ps -aq --filter label={engine.PROJECT_LABEL}={p}); "
             "docker network prune -f; docker volume prune -f")
    free = shutil.disk_usage(about["DockerRootDir"]).free
    info(f"free disk at the engine's root: {free // 10**9} GB")
    checks.check_free_disk(free, about["DockerRootDir"])


def compose_file(run: Run, work: Path, bases: dict[str, str], git_commit: str) -> dict:
    """compose.yaml + compose.test.yaml, merged by `docker-compose config`, less the GPU
    reservation; written to work/compose.yaml for the project. Returns it."""
    try:
        import yaml
    except ImportError:
        raise Failed(f"{sys.executable} has no PyYAML: run with a Python that has it (Debian's "
                     "python3, which docker-compose brings, or the project's .venv)")
    os.environ.update(GIT_COMMIT=git_commit, SWEEP_IMAGE=SWEEP_IMAGE, MLFLOW_IMAGE=MLFLOW_IMAGE,
                      SWEEPS_BASE=bases["ray"], MLFLOW_BASE=bases["python"],
                      POSTGRES_IMAGE=bases["postgres"],
                      FETCH_CIFAR="0",                           # the smoke sweep's data is generated
                      MLFLOW_PORT="0", RAY_DASHBOARD_PORT="0",   # free host ports, chosen by Docker
                      POSTGRES_PASSWORD=f"test-{os.urandom(6).hex()}")
    merged = engine.logged(["docker-compose", "--ansi", "never", "-f", "compose.yaml", "-f",
                            "compose.test.yaml", "config"], run.logs / "config.log",
                           "docker-compose config of compose.yaml + compose.test.yaml",
                           stdout=True, cwd=DOCKER)
    doc = yaml.safe_load(merged)
    devices = checks.drop_gpu_reservation(doc)
    if devices:
        info(f"removed the worker's GPU reservation: {devices}")
    (work / "compose.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return doc


def build(run: Run, project: engine.Project, service: str, label: str, tag: str) -> None:
    """One target, through compose's own build section."""
    t, old = time.monotonic(), engine.image_id(tag)
    log = run.logs / f"build-{service}.log"
    info(f"building {label} (docker-compose build {service}; log: {log})")
    engine.logged(project.argv("build", service), log, f"building {label}",
                  timeout=run.build_timeout, limit="BUILD_TIMEOUT", tail=60)
    took = time.monotonic() - t
    info(f"built {label} in {secs(took)}")
    engine.drop_replaced(old, tag)
    run.timing(f"build {label}", secs(took))


def up(run: Run, services: list[str]) -> None:
    """`up -d`, then wait until every service is healthy; the published ports answer."""
    t = time.monotonic()
    engine.logged(run.project.argv("up", "-d", "--no-build"), run.logs / "up.log", "docker-compose up",
                  timeout=run.health_timeout, limit="HEALTH_TIMEOUT", tail=200)
    deadline = t + run.health_timeout
    for service in services:
        cid = run.project.container(service)
        while not checks.service_healthy(service, c := engine.inspect(cid)[0]):
            if time.monotonic() > deadline:
                state = f"{c['State']['Status']} {(c['State'].get('Health') or {}).get('Status')}"
                raise Failed(f"service {service} not healthy within {run.health_timeout} s ({state}; "
                             "HEALTH_TIMEOUT sets the limit)")
            time.sleep(2)
        info(f"{service}: healthy after {time.monotonic() - t:.0f} s")
    run.timing(f"up until all {len(services)} healthy", secs(time.monotonic() - t))
    for name, service, port, path in (("MLflow", "mlflow", 5000, "/health"),
                                      ("Ray dashboard", "ray-head", 8265, "/api/gcs_healthz")):
        host_port = run.project.port(service, port)
        try:
            status = engine.http_status(f"http://127.0.0.1:{host_port}{path}")
        except OSError as e:
            raise Failed(f"{name} does not answer on its published port 127.0.0.1:{host_port}: {e}")
        info(f"{name} answers on http://127.0.0.1:{host_port} ({path}: {status})")


def read_mlflow(run: Run, experiment: str) -> dict:
    """The experiment's runs, read by read_mlflow.py inside the mlflow container."""
    out = engine.logged(run.project.argv("exec", "-T", "mlflow", "python", "-", experiment),
                        run.logs / "mlflow.log", "reading the runs from the MLflow server",
                        stdout=True, input=(Path(__file__).parent / "read_mlflow.py").read_text())
    return json.loads(out.strip().splitlines()[-1])


def the_test(run: Run, work: Path) -> None:
    tools_and_engine(run)

    step("stand-in base images (no registry here: rayproject/ray, python, postgres cannot be pulled)")
    t = time.monotonic()
    ray_version = dockerfile.args()["RAY_VERSION"]
    standins.build(work, run.logs, ray_version, run.opts.rebuild_standins,
                   os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian"), run.build_timeout)
    run.timing("stand-in bases", secs(time.monotonic() - t))

    project = engine.Project(f"{PROJECT_PREFIX}{time.strftime('%Y%m%d%H%M%S')}-{os.getpid()}",
                             work / "compose.yaml")
    step(f"merging docker/compose.yaml with docker/compose.test.yaml (project {project.name})")
    git_commit = os.environ.get("GIT_COMMIT") or engine.git_commit(ROOT)
    info(f"GIT_COMMIT={git_commit} (the build arg; every run must carry it as its git_commit tag)")
    doc = compose_file(run, work, standins.names(ray_version), git_commit)
    engine.logged(project.argv("config", "-q"), run.logs / "config2.log", "checking the merged compose file")

    step("building the images from docker/Dockerfile (FETCH_CIFAR=0, stand-in bases)")
    build(run, project, "mlflow", "target mlflow-server", MLFLOW_IMAGE)
    build(run, project, "ray-head", "target sweeps", SWEEP_IMAGE)
    for tag in (MLFLOW_IMAGE, SWEEP_IMAGE):
        run.timing(f"image {tag}", engine.image_size(tag))
        info(f"{tag}: {engine.image_size(tag)}")
    cache = engine.output("docker", "system", "df", "--format", '{{if eq .Type "Build Cache"}}{{.Size}}{{end}}')
    run.timing("engine's build cache after the builds", cache)
    checks.check_sweep_image(SWEEP_IMAGE, engine.inspect(SWEEP_IMAGE)[0]["Config"], git_commit)

    services = checks.start_order(doc["services"])
    step(f"docker-compose up -d: {', '.join(services)}")
    run.project = project          # from here on the teardown takes the project down
    up(run, services)

    worker = engine.inspect(project.container("ray-worker"))[0]
    host, ip = worker["Config"]["Hostname"], checks.container_ip(worker)
    nodes = json.loads(engine.logged(project.argv("exec", "-T", "ray-head", "python", "-c", RAY_NODES),
                                     run.logs / "nodes.log", "listing the Ray cluster's nodes from the head",
                                     stdout=True).strip().splitlines()[-1])
    node_id = checks.worker_node(nodes, ip)
    info(f"Ray nodes: {json.dumps(nodes)}")
    info(f"worker: host {host}, ip {ip}, Ray node {node_id}")

    plan = engine.logged(project.argv("run", "--rm", "--no-deps", "-T", "--entrypoint", "python -m orchestrator",
                                      "driver", "plan", SWEEP), run.logs / "plan.log",
                         f"orchestrator plan {SWEEP} in the image", stdout=True)
    experiment, n_trials = checks.read_plan(plan)
    info(f"{SWEEP}: sweep {experiment}, {n_trials} trials")
    expected = {"sweep": experiment, "git_commit": git_commit, "host": host, "node_ip": ip, "ray_node_id": node_id}
    sweep = project.argv("run", "--rm", "-T", "driver", "run", SWEEP, "--yes")

    step(f"docker-compose run --rm driver run {SWEEP} --yes (the first run: {n_trials} trials)")
    t = time.monotonic()
    engine.streamed(sweep, run.logs / "run1.log", "the first run", run.run_timeout, "RUN_TIMEOUT")
    run.timing(f"first run ({n_trials} trials)", secs(time.monotonic() - t))
    step("checking the MLflow server's store")
    for line in checks.check_mlflow_runs(read_mlflow(run, experiment), expected, n_trials):
        info(line)

    step(f"docker-compose run --rm driver run {SWEEP} --yes (again: must launch nothing)")
    t = time.monotonic()
    checks.check_launched_nothing(engine.streamed(sweep, run.logs / "run2.log", "the second run",
                                                  run.run_timeout, "RUN_TIMEOUT"))
    run.timing("second run (nothing to run)", secs(time.monotonic() - t))
    try:
        checks.check_mlflow_runs(read_mlflow(run, experiment), expected, n_trials)
    except Failed as e:
        raise Failed(f"the second run changed the MLflow runs: {e}")
    info("the second run launched nothing; MLflow still holds one FINISHED run per trial")


def teardown(run: Run, rc: int) -> int:
    """Always: the project down and checked gone, the images and dockerd as asked. Returns rc."""
    if run.project is not None:
        try:
            if rc != 0:
                step("failure: logs of the project's containers")
                run.project.print_logs()
            step(f"tearing down compose project {run.project.name}")
            t = time.monotonic()
            run.project.down(run.logs / "down.log")
            checks.check_nothing_left(run.project.name, run.project.labelled())
            info(f"no container, network or volume of {run.project.name} is left ({time.monotonic() - t:.0f} s)")
        except (Failed, OSError, subprocess.SubprocessError) as e:
            print(f"FAILED: {e}", file=sys.stderr)
            rc = rc or 1
    engine_up = engine.answers("docker", "info")
    if run.opts.remove_images and engine_up:
        step("removing the images this test built (--remove-images)")
        bases = standins.names(dockerfile.args()["RAY_VERSION"])
        engine.answers("docker", "rmi", SWEEP_IMAGE, MLFLOW_IMAGE, *bases.values(), standins.DEBIAN)
        info("removed")
    if run.opts.prune_build_cache and engine_up:
        step("emptying the engine's BuildKit cache (--prune-build-cache: all of it, not only this test's)")
        info(engine.output("docker", "builder", "prune", "--force").splitlines()[-1])
    if run.dockerd is not None and os.environ.get("KEEP_DOCKERD") != "1":
        step(f"stopping the dockerd this test started (pid {run.dockerd.pid}; KEEP_DOCKERD=1 keeps it)")
        engine.stop_dockerd(run.dockerd)
    return rc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="docker/test-image.sh", description=ABOUT,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--remove-images", action="store_true", help="also remove the images it built")
    parser.add_argument("--prune-build-cache", action="store_true",
                        help="and empty the engine's BuildKit cache (all of it)")
    parser.add_argument("--rebuild-standins", action="store_true", help="make the stand-in bases anew")
    opts = parser.parse_args(argv)
    # Debian's client first: a client on PATH without buildx (e.g. 28.x in /usr/local/bin)
    # cannot build with BuildKit, and docker-compose (COMPOSE_DOCKER_CLI_BUILD=1) calls `docker`.
    os.environ.update(PATH="/usr/bin:/usr/sbin:/bin:/sbin:" + os.environ.get("PATH", ""),
                      DOCKER_BUILDKIT="1", COMPOSE_DOCKER_CLI_BUILD="1", BUILDKIT_PROGRESS="plain")
    work = Path(tempfile.mkdtemp(prefix="manifold-imgtest.", dir="/var/tmp"))
    (work / "logs").mkdir()
    run = Run(opts, work / "logs")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    rc = 0
    try:
        run.build_timeout = setting("BUILD_TIMEOUT", 3600)
        run.health_timeout = setting("HEALTH_TIMEOUT", 600)
        run.run_timeout = setting("RUN_TIMEOUT", 1800)
        the_test(run, work)
    except Failed as e:
        print(f"\nFAILED: {e}", file=sys.stderr, flush=True)
        rc = 1
    except KeyboardInterrupt:
        rc = 130
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else 1
    except Exception:                  # a bug of the test itself: show it, still tear down
        traceback.print_exc()
        rc = 1
    rc = teardown(run, rc)
    elapsed = engine.clock(time.monotonic() - engine.T0)
    if rc == 0:
        shutil.rmtree(work)
        if run.timings:
            step("timings and sizes")
            print("\n".join(f"    {t}" for t in run.timings))
        print(f"\nPASSED: docker/ built and ran end to end (total {elapsed})")
    else:
        print(f"\nFAILED after {elapsed}; logs of each step: {run.logs}", file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main())
