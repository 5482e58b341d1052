"""docker/compose.yaml (and the image test's override) hold together: services,
health checks, builds, volumes, the MLflow server and the Ray commands. Static."""
from __future__ import annotations

import yaml

from deploy_files import DOCKER, DOCKERFILE, COMPOSE, dockerfile, click_options, long_options, compose


# --- compose ---------------------------------------------------------------------------

def test_compose_services_and_health_checks():
    services = compose()["services"]
    assert {"postgres", "mlflow", "ray-head", "ray-worker", "driver"} <= set(services)
    for name, service in services.items():
        if name != "driver":
            assert "healthcheck" in service, f"service {name} has no health check"
        for dep in service.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown service {dep}"
            assert "healthcheck" in services[dep]
    devices = services["ray-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]


def test_compose_builds_from_existing_files_and_stages():
    stage_names = {s["name"] for s in dockerfile.stages()}
    for name, service in compose()["services"].items():
        build = service.get("build")
        if build:
            assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
            assert build["target"] in stage_names, f"{name}: no stage {build['target']}"


def test_compose_passes_the_commit_to_the_sweep_image():
    """The image has no .git: runs get their git_commit tag from the GIT_COMMIT build arg."""
    declared = set(dockerfile.args())
    for name, service in compose()["services"].items():
        build = service.get("build")
        if build and build["target"] == "sweeps":
            args = build.get("args", {})
            assert args.get("GIT_COMMIT", "").startswith("${GIT_COMMIT"), f"{name}: {args}"
            assert set(args) <= declared, f"{name}: build args {set(args) - declared} not in the Dockerfile"


def test_compose_test_override_only_swaps_images():
    """docker/compose.test.yaml (the image test's) changes images and build args, nothing
    else: what the test runs is compose.yaml."""
    override = yaml.safe_load((DOCKER / "compose.test.yaml").read_text())
    services = compose()["services"]
    declared = set(dockerfile.args())
    for name, service in override["services"].items():
        assert name in services, f"compose.test.yaml names an unknown service {name}"
        assert set(service) <= {"image", "build"}, f"{name}: {set(service)}"
        if "build" in service:
            assert set(service["build"]) == {"args"} and set(service["build"]["args"]) <= declared


def test_compose_volumes_exist():
    doc = compose()
    for name, service in doc["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                assert (COMPOSE.parent / source).exists(), f"{name}: bind source {source} missing"
            else:
                assert source in doc["volumes"], f"{name}: volume {source} not declared"


def test_compose_mlflow_server_is_postgres_backed_with_served_artifacts():
    from mlflow.cli import server
    command = compose()["services"]["mlflow"]["command"]
    assert command[:2] == ["mlflow", "server"]
    unknown = long_options(command[2:]) - click_options(server)
    assert not unknown, f"`mlflow server` has no option(s) {unknown}"
    opts = dict(a.split("=", 1) for a in command[2:] if "=" in a)
    assert opts["--backend-store-uri"].startswith("postgresql://")
    assert "@postgres:5432/" in opts["--backend-store-uri"]
    assert "--serve-artifacts" in command and "--artifacts-destination" in opts
    assert "mlflow" in opts["--allowed-hosts"].split(","), "trials reach the server as mlflow:5000"


def test_compose_ray_commands_and_addresses():
    from ray.scripts.scripts import start
    services = compose()["services"]
    head, worker = services["ray-head"]["entrypoint"], services["ray-worker"]["entrypoint"]
    for argv in (head, worker):
        assert argv[:2] == ["ray", "start"] and "--block" in argv
        unknown = long_options(argv[2:]) - click_options(start)
        assert not unknown, f"`ray start` has no option(s) {unknown}"
    port = next(a.split("=")[1] for a in head if a.startswith("--port="))
    assert f"--address=ray-head:{port}" in worker
    assert services["driver"]["environment"]["RAY_ADDRESS"] == f"ray-head:{port}"
    mlflow_port = next(a.split("=")[1] for a in services["mlflow"]["command"] if a.startswith("--port="))
    for name in ("ray-head", "ray-worker", "driver"):
        assert services[name]["environment"]["MLFLOW_TRACKING_URI"] == f"http://mlflow:{mlflow_port}"
