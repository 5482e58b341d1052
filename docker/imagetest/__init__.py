"""The Docker image, built and run for real: an end-to-end test of docker/.

What it proves, on a machine with no GPU and no image registry:
  - docker/Dockerfile builds, both targets (`mlflow-server` and `sweeps`, FETCH_CIFAR=0),
    with BuildKit, from stand-in base images (below);
  - docker/compose.yaml brings up its topology: Postgres, the MLflow server, a Ray head and
    one Ray worker, each passing its own health check, the ports published on 127.0.0.1;
  - `docker-compose run --rm driver run sweeps/smoke.yaml --yes` (the README's command,
    with the smoke sweep) runs every trial on the worker: every trial's run is FINISHED in
    the MLflow server's store (Postgres), tagged with the worker's host, node IP and Ray
    node id, and `git_commit` = the commit passed at build time (the image has no .git);
  - a second `run` launches nothing ("nothing to run: every trial is FINISHED in MLflow.");
  - it then tears down what it started, by project name, and checks that no container,
    network or volume of that project is left.
It runs compose.yaml itself, merged with docker/compose.test.yaml (the stand-in bases and
Postgres) by `docker-compose config`; one thing an override file cannot remove in
docker-compose v1 is then dropped from that merged file: the worker's NVIDIA GPU
reservation (there is no GPU here). Everything else is compose.yaml as users run it.

What it does not prove: a real GPU node, the real `rayproject/ray` and `python:3.12-slim`
bases, the real `postgres` image, KubeRay, `ray up` (README: "Run on a GPU cluster").

Stand-in bases (standin-images/, built by standins.py): Debian bookworm (debootstrap,
`docker import`) with python3 and a venv;
  manifold-standin/ray:<RAY_VERSION>  user ray (uid 1000, gid 100), `pip` on PATH, ray[default]
  manifold-standin/python:bookworm    root, `python`/`pip` on PATH (for python:3.12-slim)
  manifold-standin/postgres:15        Debian's PostgreSQL with the official image's env vars
They carry this host's CA bundle (this network re-signs HTTPS); the project's Dockerfile
does not. They are built once and reused; --rebuild-standins makes them anew.

Run (as root, on Debian/Ubuntu; it apt-get installs docker.io, docker-compose and
debootstrap if missing, and starts dockerd if no engine answers):
  bash docker/test-image.sh                      # from the repository root or anywhere
  bash docker/test-image.sh --remove-images      # also remove the images it built
  bash docker/test-image.sh --prune-build-cache  # and empty the engine's build cache
  bash docker/test-image.sh --rebuild-standins   # make the stand-in bases anew
(test-image.sh runs `python3 -m imagetest` from docker/; any Python 3.10+ will do: the test
uses the standard library, and PyYAML, which docker-compose brings, once that is installed.)
Time, on a 2-core machine: 5-6 min from nothing installed (apt, debootstrap and the
stand-ins 1.5-2 min; the sweep image's build, pip fetching torch's ~3 GB of CUDA wheels,
1.5 min here and up to ~6 min on a slower link; the cluster and the sweep 1.5 min);
1.5 min again when the images are cached. Disk: 20 GB free needed, ~9 GB kept.
It keeps the images it built (manifold-sweeps:standin-test, manifold-mlflow:standin-test
and the stand-ins) for a faster rerun, unless --remove-images; an image that a rebuild
replaces is removed. BuildKit's cache may keep the layers of each build (the install layer
is ~7 GB, rebuilt whenever the code changes) until --prune-build-cache or
`docker builder prune`. If it started dockerd it stops it at the end (KEEP_DOCKERD=1
keeps it running).

Settings (environment): GIT_COMMIT (default: `git rev-parse HEAD` of this checkout, with
-dirty if tracked files changed), BUILD_TIMEOUT (s, per target, 3600), HEALTH_TIMEOUT (s,
600), RUN_TIMEOUT (s, 1800), KEEP_DOCKERD (1: leave a dockerd it started running),
DEBIAN_MIRROR (debootstrap's, http://deb.debian.org/debian).

Modules: __main__ (the steps, in order), engine (commands, the engine, compose),
standins (the stand-in bases), checks (what is asserted: plain functions of plain data),
read_mlflow (run inside the MLflow container: the runs as JSON), dockerfile (the parser).
"""
