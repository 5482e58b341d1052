#!/usr/bin/env bash
# The Docker image, built and run for real: an end-to-end test of docker/.
#
# What it proves, on a machine with no GPU and no image registry:
#   - docker/Dockerfile builds, both targets (`mlflow-server` and `sweeps`, FETCH_CIFAR=0),
#     with BuildKit, from stand-in base images (below);
#   - docker/compose.yaml brings up its topology: Postgres, the MLflow server, a Ray head and
#     one Ray worker, each passing its own health check, the ports published on 127.0.0.1;
#   - `docker-compose run --rm driver run sweeps/smoke.yaml --yes` (the README's command,
#     with the smoke sweep) runs every trial on the worker: every trial's run is FINISHED in
#     the MLflow server's store (Postgres), tagged with the worker's host, node IP and Ray
#     node id, and `git_commit` = the commit passed at build time (the image has no .git);
#   - a second `run` launches nothing ("nothing to run: every trial is FINISHED in MLflow.");
#   - it then tears down what it started, by project name, and checks that no container,
#     network or volume of that project is left.
# It runs compose.yaml itself, merged with docker/compose.test.yaml (the stand-in bases and
# Postgres) by `docker-compose config`; one thing an override file cannot remove in
# docker-compose v1 is then dropped from that merged file: the worker's NVIDIA GPU
# reservation (there is no GPU here). Everything else is compose.yaml as users run it.
#
# What it does not prove: a real GPU node, the real `rayproject/ray` and `python:3.12-slim`
# bases, the real `postgres` image, KubeRay, `ray up` (README: "Run on a GPU cluster").
#
# Stand-in bases: Debian bookworm (debootstrap, `docker import`) with python3 and a venv;
#   manifold-standin/ray:<RAY_VERSION>  user ray (uid 1000, gid 100), `pip` on PATH, ray[default]
#   manifold-standin/python:bookworm    root, `python`/`pip` on PATH (for python:3.12-slim)
#   manifold-standin/postgres:15        Debian's PostgreSQL with the official image's env vars
# They carry this host's CA bundle (this network re-signs HTTPS); the project's Dockerfile
# does not. They are built once and reused; --rebuild-standins makes them anew.
#
# Run (as root, on Debian/Ubuntu; it apt-get installs docker.io, docker-compose and
# debootstrap if missing, and starts dockerd if no engine answers):
#   bash docker/test-image.sh                   # from the repository root or anywhere
#   bash docker/test-image.sh --remove-images   # also remove the images it built
#   bash docker/test-image.sh --prune-build-cache  # and empty the engine's build cache
#   bash docker/test-image.sh --rebuild-standins   # make the stand-in bases anew
# Time, on a 2-core machine: 5-6 min from nothing installed (apt, debootstrap and the
# stand-ins 1.5-2 min; the sweep image's build, pip fetching torch's ~3 GB of CUDA wheels,
# 1.5 min here and up to ~6 min on a slower link; the cluster and the sweep 1.5 min);
# 1.5 min again when the images are cached. Disk: 20 GB free needed, ~9 GB kept.
# It keeps the images it built (manifold-sweeps:standin-test, manifold-mlflow:standin-test
# and the stand-ins) for a faster rerun, unless --remove-images; an image that a rebuild
# replaces is removed. BuildKit's cache may keep the layers of each build (the install layer
# is ~7 GB, rebuilt whenever the code changes) until --prune-build-cache or
# `docker builder prune`. If it started dockerd it stops it at the end (KEEP_DOCKERD=1
# keeps it running).
#
# Settings (environment): GIT_COMMIT (default: `git rev-parse HEAD` of this checkout),
# BUILD_TIMEOUT (s, per target, 3600), HEALTH_TIMEOUT (s, 600), RUN_TIMEOUT (s, 1800).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
T0=$(date +%s)

REMOVE_IMAGES=0
REBUILD_STANDINS=0
PRUNE_BUILD_CACHE=0
for arg in "$@"; do
    case "$arg" in
        --remove-images) REMOVE_IMAGES=1 ;;
        --prune-build-cache) PRUNE_BUILD_CACHE=1 ;;
        --rebuild-standins) REBUILD_STANDINS=1 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown option: $arg (see --help)" >&2; exit 2 ;;
    esac
done

BUILD_TIMEOUT=${BUILD_TIMEOUT:-3600}
HEALTH_TIMEOUT=${HEALTH_TIMEOUT:-600}
RUN_TIMEOUT=${RUN_TIMEOUT:-1800}
KEEP_DOCKERD=${KEEP_DOCKERD:-0}

SWEEP_IMAGE=manifold-sweeps:standin-test
MLFLOW_IMAGE=manifold-mlflow:standin-test
STANDIN_DEBIAN=manifold-standin/debian:bookworm
STANDIN_PYTHON=manifold-standin/python:bookworm
STANDIN_POSTGRES=manifold-standin/postgres:15
RAY_VERSION=$(sed -n 's/^ARG RAY_VERSION=//p' "$ROOT/docker/Dockerfile")
STANDIN_RAY=manifold-standin/ray:$RAY_VERSION
PROJECT=manifold-imgtest-$(date +%Y%m%d%H%M%S)-$$
SWEEP=sweeps/smoke.yaml
SWEEP_NAME=smoke

# Debian's client first: a client on PATH without buildx (e.g. 28.x in /usr/local/bin)
# cannot build with BuildKit, and docker-compose (COMPOSE_DOCKER_CLI_BUILD=1) calls `docker`.
export PATH=/usr/bin:/usr/sbin:/bin:/sbin:$PATH
export DOCKER_BUILDKIT=1 COMPOSE_DOCKER_CLI_BUILD=1 BUILDKIT_PROGRESS=plain

WORK=$(mktemp -d /var/tmp/manifold-imgtest.XXXXXX)
LOGS=$WORK/logs
mkdir -p "$LOGS"
COMPOSE_FILE_RENDERED=$WORK/compose.yaml
STARTED_DOCKERD_PID=
UP_STARTED=0
declare -a TIMINGS=()

elapsed() { local s=$(( $(date +%s) - T0 )); printf '%dm%02ds' $((s / 60)) $((s % 60)); }
step() { printf '\n==> [%s] %s\n' "$(elapsed)" "$*"; }
info() { printf '    %s\n' "$*"; }
fail() { printf '\nFAILED: %s\n' "$*" >&2; exit 1; }
timing() { TIMINGS+=("$(printf '%-40s %s' "$1" "$2")"); }
secs() { local s=$1; printf '%dm%02ds (%d s)' $((s / 60)) $((s % 60)) "$s"; }
compose() { docker-compose --ansi never -p "$PROJECT" -f "$COMPOSE_FILE_RENDERED" "$@"; }
image_size() { docker image inspect -f '{{.Size}}' "$1" | awk '{printf "%.2f GB (%.0f bytes)", $1 / 1e9, $1}'; }
drop_replaced() {  # drop_replaced OLD_ID TAG: the image a rebuild of TAG left untagged
    local new
    new=$(docker image inspect -f '{{.Id}}' "$2")
    if [ -n "$1" ] && [ "$1" != "$new" ] && docker rmi "$1" >/dev/null 2>&1; then
        info "removed the previous $2 (${1:7:12}), which this build replaced"
    fi
}

# --- teardown: always, by project name --------------------------------------------------
teardown() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    if [ "$UP_STARTED" = 1 ]; then
        if [ "$rc" != 0 ]; then
            step "failure: logs of the project's containers"
            docker ps -a --filter "label=com.docker.compose.project=$PROJECT" \
                --format 'table {{.Names}}\t{{.Status}}'
            for c in $(docker ps -aq --filter "label=com.docker.compose.project=$PROJECT"); do
                printf '\n----- %s (last 80 lines) -----\n' "$(docker inspect -f '{{.Name}}' "$c")"
                docker logs --tail 80 "$c" 2>&1
                local health
                health=$(docker inspect -f '{{if .State.Health}}{{range .State.Health.Log}}{{.Output}}{{end}}{{end}}' "$c" 2>/dev/null | tail -5)
                [ -n "$health" ] && printf -- '--- health check output:\n%s\n' "$health"
            done
        fi
        step "tearing down compose project $PROJECT"
        local t; t=$(date +%s)
        timeout 300 docker-compose --ansi never -p "$PROJECT" -f "$COMPOSE_FILE_RENDERED" \
            down --volumes --remove-orphans --timeout 20 >"$LOGS/down.log" 2>&1 \
            || { cat "$LOGS/down.log"; info "docker-compose down failed; removing by label"; }
        # Anything the project left (a one-off container of a killed `run`, say): by label.
        local left
        left=$(docker ps -aq --filter "label=com.docker.compose.project=$PROJECT")
        [ -n "$left" ] && docker rm -f $left >/dev/null
        left=$(docker network ls -q --filter "label=com.docker.compose.project=$PROJECT")
        [ -n "$left" ] && docker network rm $left >/dev/null
        left=$(docker volume ls -q --filter "label=com.docker.compose.project=$PROJECT")
        [ -n "$left" ] && docker volume rm $left >/dev/null
        local remaining
        remaining=$( { docker ps -aq --filter "label=com.docker.compose.project=$PROJECT"
                       docker network ls -q --filter "label=com.docker.compose.project=$PROJECT"
                       docker volume ls -q --filter "label=com.docker.compose.project=$PROJECT"; } | wc -l)
        if [ "$remaining" != 0 ]; then
            printf 'FAILED: %s containers/networks/volumes of %s are left\n' "$remaining" "$PROJECT" >&2
            [ "$rc" = 0 ] && rc=1
        else
            info "no container, network or volume of $PROJECT is left ($(( $(date +%s) - t )) s)"
        fi
    fi
    if [ "$REMOVE_IMAGES" = 1 ] && docker info >/dev/null 2>&1; then
        step "removing the images this test built (--remove-images)"
        docker rmi "$SWEEP_IMAGE" "$MLFLOW_IMAGE" "$STANDIN_RAY" "$STANDIN_PYTHON" \
            "$STANDIN_POSTGRES" "$STANDIN_DEBIAN" >/dev/null 2>&1
        info "removed"
    fi
    if [ "$PRUNE_BUILD_CACHE" = 1 ] && docker info >/dev/null 2>&1; then
        step "emptying the engine's BuildKit cache (--prune-build-cache: all of it, not only this test's)"
        docker builder prune --force 2>&1 | tail -1 | sed 's/^/    /'
    fi
    if [ -n "$STARTED_DOCKERD_PID" ] && [ "$KEEP_DOCKERD" != 1 ]; then
        step "stopping the dockerd this test started (pid $STARTED_DOCKERD_PID; KEEP_DOCKERD=1 keeps it)"
        kill "$STARTED_DOCKERD_PID" 2>/dev/null
        for _ in $(seq 60); do kill -0 "$STARTED_DOCKERD_PID" 2>/dev/null || break; sleep 1; done
    fi
    if [ "$rc" = 0 ]; then
        rm -rf "$WORK"
        if [ "${#TIMINGS[@]}" != 0 ]; then
            step "timings and sizes"
            printf '    %s\n' "${TIMINGS[@]}"
        fi
        printf '\nPASSED: docker/ built and ran end to end (total %s)\n' "$(elapsed)"
    else
        printf '\nFAILED after %s; logs of each step: %s\n' "$(elapsed)" "$LOGS" >&2
    fi
    exit "$rc"
}
trap teardown EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- 1. tools ---------------------------------------------------------------------------
step "checking the tools (Docker engine, docker-compose, debootstrap)"
missing=()
command -v dockerd >/dev/null || [ -x /usr/bin/docker ] || missing+=(docker.io)
command -v docker-compose >/dev/null || missing+=(docker-compose)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if [ "${#missing[@]}" != 0 ]; then
    [ "$(id -u)" = 0 ] || fail "missing ${missing[*]}; run as root (it apt-get installs them) or install them"
    command -v apt-get >/dev/null || fail "missing ${missing[*]} and no apt-get: install them by hand"
    info "apt-get install ${missing[*]}"
    apt-get update -qq >"$LOGS/apt.log" 2>&1 || { cat "$LOGS/apt.log"; fail "apt-get update failed"; }
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >>"$LOGS/apt.log" 2>&1 \
        || { tail -30 "$LOGS/apt.log"; fail "apt-get install ${missing[*]} failed"; }
fi
# (`docker version` prints the client's version, and fails, while no engine answers)
client_version=$(docker version -f '{{.Client.Version}}' 2>/dev/null | head -1 || true)
info "docker client: $(command -v docker) (${client_version:-?})"
info "docker-compose: $(docker-compose version --short 2>/dev/null)"
client_major=${client_version%%.*}
if ! docker buildx version >/dev/null 2>&1 && [ "${client_major:-0}" -ge 23 ]; then
    fail "the docker client on PATH ($(command -v docker), ${client_major}.x) has no buildx, so it
    cannot build with BuildKit. Install Debian's client (apt-get install docker.io: /usr/bin/docker)
    or the buildx plugin."
fi

# --- 2. engine --------------------------------------------------------------------------
step "checking the Docker engine"
if ! docker info >/dev/null 2>&1; then
    [ "$(id -u)" = 0 ] || fail "no Docker engine answers and this is not root: start dockerd, or run as root"
    command -v dockerd >/dev/null || fail "no Docker engine answers and no dockerd: apt-get install docker.io"
    info "no engine answers: starting dockerd in the background (log: $LOGS/dockerd.log)"
    dockerd >"$LOGS/dockerd.log" 2>&1 &
    STARTED_DOCKERD_PID=$!
    deadline=$(( $(date +%s) + 120 ))
    until docker info >/dev/null 2>&1; do
        kill -0 "$STARTED_DOCKERD_PID" 2>/dev/null \
            || { STARTED_DOCKERD_PID=; tail -20 "$LOGS/dockerd.log"; fail "dockerd exited (log above)"; }
        [ "$(date +%s)" -lt "$deadline" ] \
            || { tail -20 "$LOGS/dockerd.log"; fail "dockerd did not answer within 120 s (log above)"; }
        sleep 1
    done
fi
info "engine $(docker version -f '{{.Server.Version}}'), storage $(docker info -f '{{.Driver}}'), root $(docker info -f '{{.DockerRootDir}}')"
leftover=$(docker ps -a --format '{{.Label "com.docker.compose.project"}}' | grep '^manifold-imgtest-' | sort -u || true)
for p in $leftover; do
    info "warning: containers of an earlier run $p are still there (a run in progress, or one killed"
    info "  before its teardown); if none is running, remove them with:"
    info "  docker rm -f \$(docker ps -aq --filter label=com.docker.compose.project=$p); docker network prune -f; docker volume prune -f"
done
free_gb=$(df -P -BG "$(docker info -f '{{.DockerRootDir}}')" | awk 'NR == 2 {sub("G", "", $4); print $4}')
info "free disk at the engine's root: ${free_gb} GB"
[ "$free_gb" -ge 20 ] || fail "only ${free_gb} GB free under $(docker info -f '{{.DockerRootDir}}'); the builds need
    about 20 GB (the sweep image is ~7 GB, plus BuildKit's cache of pip's wheels). Free some:
    docker image prune; docker builder prune"

# --- 3. stand-in bases ------------------------------------------------------------------
step "stand-in base images (no registry here: rayproject/ray, python, postgres cannot be pulled)"
t=$(date +%s)
if [ "$REBUILD_STANDINS" = 1 ] || ! docker image inspect "$STANDIN_DEBIAN" >/dev/null 2>&1; then
    [ "$(id -u)" = 0 ] || fail "making $STANDIN_DEBIAN needs root (debootstrap): run this as root once"
    info "debootstrap bookworm (minbase + python3, python3-venv, python3-pip, ca-certificates)"
    mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
    debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
        bookworm "$WORK/rootfs" "$mirror" >"$LOGS/debootstrap.log" 2>&1 \
        || { tail -30 "$LOGS/debootstrap.log"; fail "debootstrap failed (mirror $mirror; set DEBIAN_MIRROR)"; }
    # This network re-signs HTTPS: the host's CA bundle, so that pip and apt work in builds.
    cp /etc/ssl/certs/ca-certificates.crt "$WORK/rootfs/etc/ssl/certs/ca-certificates.crt"
    rm -rf "$WORK/rootfs/var/cache/apt/archives/"*.deb "$WORK/rootfs/var/lib/apt/lists/"*
    old=$(docker image inspect -f '{{.Id}}' "$STANDIN_DEBIAN" 2>/dev/null || true)
    tar -C "$WORK/rootfs" -c . | docker import \
        --change 'LABEL org.manifold-sweeps.standin=debian' --change 'CMD ["bash"]' \
        - "$STANDIN_DEBIAN" >/dev/null
    rm -rf "$WORK/rootfs"
    info "imported $STANDIN_DEBIAN"
    drop_replaced "$old" "$STANDIN_DEBIAN"
else
    info "$STANDIN_DEBIAN exists (--rebuild-standins makes it anew)"
fi

mkdir -p "$WORK/standin-ray" "$WORK/standin-python" "$WORK/standin-postgres"
# rayproject/ray: user ray (uid 1000, gid 100 users), HOME /home/ray, a Python whose `pip`
# the user ray installs into, and Ray itself with its dashboard (ray[default]).
cat >"$WORK/standin-ray/Dockerfile" <<'EOF'
FROM manifold-standin/debian:bookworm
ARG RAY_VERSION
RUN useradd --create-home --uid 1000 --gid 100 --shell /bin/bash ray \
    && python3 -m venv /home/ray/venv && chown -R ray:users /home/ray/venv
ENV PATH=/home/ray/venv/bin:$PATH
USER 1000:100
WORKDIR /home/ray
RUN pip install --no-cache-dir "ray[default]==${RAY_VERSION}"
LABEL org.manifold-sweeps.standin=rayproject/ray
CMD ["bash"]
EOF
# python:3.12-slim: root, `python` and `pip` on PATH (a venv, so that pip may install).
cat >"$WORK/standin-python/Dockerfile" <<'EOF'
FROM manifold-standin/debian:bookworm
RUN python3 -m venv /opt/python
ENV PATH=/opt/python/bin:$PATH
LABEL org.manifold-sweeps.standin=python
CMD ["python3"]
EOF
# postgres: the official image's interface as compose.yaml uses it (POSTGRES_USER,
# POSTGRES_PASSWORD, POSTGRES_DB, the data volume, pg_isready), on Debian's PostgreSQL 15.
cat >"$WORK/standin-postgres/docker-entrypoint.sh" <<'EOF'
#!/bin/bash
set -euo pipefail
: "${PGDATA:=/var/lib/postgresql/data}"
user=${POSTGRES_USER:-postgres}
db=${POSTGRES_DB:-$user}
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    pwfile=$(mktemp)
    printf '%s\n' "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD is required}" >"$pwfile"
    # UTF8, as the official image (LANG en_US.utf8): with initdb's default here (SQL_ASCII)
    # psycopg 3 returns bytes and the MLflow server cannot start.
    initdb -D "$PGDATA" --username="$user" --pwfile="$pwfile" --encoding=UTF8 \
        --locale=C.UTF-8 --auth-local=trust --auth-host=scram-sha-256 >/dev/null
    rm -f "$pwfile"
    echo "listen_addresses = '*'" >>"$PGDATA/postgresql.conf"
    echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
    if [ "$db" != postgres ]; then
        echo "CREATE DATABASE \"$db\";" | postgres --single -D "$PGDATA" postgres >/dev/null
    fi
    echo "stand-in postgres: initialised $PGDATA (user $user, database $db)"
fi
exec postgres -D "$PGDATA" "$@"
EOF
chmod 755 "$WORK/standin-postgres/docker-entrypoint.sh"
cat >"$WORK/standin-postgres/Dockerfile" <<'EOF'
FROM manifold-standin/debian:bookworm
RUN mkdir -p /etc/postgresql-common \
    && echo 'create_main_cluster = false' >/etc/postgresql-common/createcluster.conf \
    && apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql-15 \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /var/lib/postgresql/data /var/run/postgresql \
    && chown postgres:postgres /var/lib/postgresql/data /var/run/postgresql \
    && chmod 700 /var/lib/postgresql/data
COPY docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data
USER postgres
VOLUME ["/var/lib/postgresql/data"]
EXPOSE 5432
LABEL org.manifold-sweeps.standin=postgres
ENTRYPOINT ["docker-entrypoint.sh"]
EOF
for spec in "ray:$STANDIN_RAY" "python:$STANDIN_PYTHON" "postgres:$STANDIN_POSTGRES"; do
    name=${spec%%:*}; tag=${spec#*:}
    old=$(docker image inspect -f '{{.Id}}' "$tag" 2>/dev/null || true)
    timeout "$BUILD_TIMEOUT" docker build --build-arg RAY_VERSION="$RAY_VERSION" -t "$tag" \
        "$WORK/standin-$name" >"$LOGS/standin-$name.log" 2>&1 \
        || { tail -40 "$LOGS/standin-$name.log"; fail "building the stand-in $tag failed (log above)"; }
    drop_replaced "$old" "$tag"
    info "$tag: $(image_size "$tag")"
done
timing "stand-in bases" "$(secs $(( $(date +%s) - t )))"

# --- 4. the compose configuration ---------------------------------------------------------
step "merging docker/compose.yaml with docker/compose.test.yaml (project $PROJECT)"
if [ -z "${GIT_COMMIT:-}" ]; then
    GIT_COMMIT=$(git -C "$ROOT" rev-parse HEAD 2>/dev/null) \
        || fail "$ROOT is not a git checkout: set GIT_COMMIT to the commit this code is"
    # as orchestrator/tracking.py marks a checkout with changes since that commit
    [ -z "$(git -C "$ROOT" status --porcelain --untracked-files=no)" ] || GIT_COMMIT=$GIT_COMMIT-dirty
fi
info "GIT_COMMIT=$GIT_COMMIT (the build arg; every run must carry it as its git_commit tag)"
export GIT_COMMIT SWEEP_IMAGE MLFLOW_IMAGE
export SWEEPS_BASE=$STANDIN_RAY MLFLOW_BASE=$STANDIN_PYTHON POSTGRES_IMAGE=$STANDIN_POSTGRES
export FETCH_CIFAR=0                      # the smoke sweep's data is generated
export MLFLOW_PORT=0 RAY_DASHBOARD_PORT=0 # free host ports, chosen by Docker
export POSTGRES_PASSWORD=test-$RANDOM$RANDOM
(cd "$ROOT/docker" && docker-compose --ansi never -p "$PROJECT" -f compose.yaml -f compose.test.yaml \
    config) >"$WORK/compose.merged.yaml" 2>"$LOGS/config.log" \
    || { cat "$LOGS/config.log"; fail "docker-compose config rejected compose.yaml + compose.test.yaml"; }
# No GPU here: drop the worker's GPU reservation (an override cannot remove it in compose v1).
/usr/bin/python3 - "$WORK/compose.merged.yaml" "$COMPOSE_FILE_RENDERED" <<'EOF'
import sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
worker = doc["services"]["ray-worker"]
devices = worker.get("deploy", {}).get("resources", {}).get("reservations", {}).pop("devices", None)
if devices is not None:
    assert [d.get("driver") for d in devices] == ["nvidia"], f"unexpected reservation {devices}"
    print(f"    removed the worker's GPU reservation: {devices}")
    reservations = worker["deploy"]["resources"]["reservations"]
    if not reservations:
        del worker["deploy"]["resources"]["reservations"]
    if not worker["deploy"]["resources"]:
        del worker["deploy"]["resources"]
    if not worker["deploy"]:
        del worker["deploy"]
gpu_left = [name for name, s in doc["services"].items() if "devices" in str(s.get("deploy", ""))]
assert not gpu_left, f"device reservations left on {gpu_left}"
yaml.safe_dump(doc, open(sys.argv[2], "w"), sort_keys=False)
EOF
compose config -q 2>"$LOGS/config2.log" || { cat "$LOGS/config2.log"; fail "the merged compose file is invalid"; }

# --- 5. build ---------------------------------------------------------------------------
build() {  # build SERVICE LABEL TAG: one target through compose's own build section
    local service=$1 label=$2 tag=$3 t old; t=$(date +%s)
    old=$(docker image inspect -f '{{.Id}}' "$tag" 2>/dev/null || true)
    info "building $label (docker-compose build $service; log: $LOGS/build-$service.log)"
    timeout "$BUILD_TIMEOUT" docker-compose --ansi never -p "$PROJECT" -f "$COMPOSE_FILE_RENDERED" \
        build "$service" >"$LOGS/build-$service.log" 2>&1 \
        || { tail -60 "$LOGS/build-$service.log"
             fail "building $label failed (log above; a timeout after ${BUILD_TIMEOUT}s gives rc 124)"; }
    local took=$(( $(date +%s) - t ))
    info "built $label in $(secs "$took")"
    drop_replaced "$old" "$tag"
    timing "build $label" "$(secs "$took")"
}
step "building the images from docker/Dockerfile (FETCH_CIFAR=0, stand-in bases)"
build mlflow "target mlflow-server" "$MLFLOW_IMAGE"
build ray-head "target sweeps" "$SWEEP_IMAGE"
timing "image $MLFLOW_IMAGE" "$(image_size "$MLFLOW_IMAGE")"
timing "image $SWEEP_IMAGE" "$(image_size "$SWEEP_IMAGE")"
timing "engine's build cache after the builds" "$(docker system df --format '{{if eq .Type "Build Cache"}}{{.Size}}{{end}}' | tr -d '\n')"
info "$MLFLOW_IMAGE: $(image_size "$MLFLOW_IMAGE")"
info "$SWEEP_IMAGE: $(image_size "$SWEEP_IMAGE")"
[ "$(docker image inspect -f '{{range .Config.Env}}{{println .}}{{end}}' "$SWEEP_IMAGE" | sed -n 's/^GIT_COMMIT=//p')" = "$GIT_COMMIT" ] \
    || fail "$SWEEP_IMAGE has not GIT_COMMIT=$GIT_COMMIT in its environment: compose.yaml's build args"
[ "$(docker image inspect -f '{{.Config.User}}' "$SWEEP_IMAGE")" = "1000:100" ] \
    || fail "$SWEEP_IMAGE does not run as 1000:100"

# --- 6. up ------------------------------------------------------------------------------
step "docker-compose up -d: postgres, mlflow, ray-head, ray-worker"
t=$(date +%s)
UP_STARTED=1
timeout "$HEALTH_TIMEOUT" docker-compose --ansi never -p "$PROJECT" -f "$COMPOSE_FILE_RENDERED" \
    up -d --no-build >"$LOGS/up.log" 2>&1 || { cat "$LOGS/up.log"; fail "docker-compose up failed"; }
cid() { compose ps -q "$1"; }
deadline=$(( $(date +%s) + HEALTH_TIMEOUT ))
for service in postgres mlflow ray-head ray-worker; do
    c=$(cid "$service")
    [ -n "$c" ] || fail "no container for service $service (docker-compose up: $LOGS/up.log)"
    while :; do
        state=$(docker inspect -f '{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' "$c")
        [ "$(docker inspect -f '{{.RestartCount}}' "$c")" = 0 ] \
            || fail "service $service crashed and was restarted (its logs follow)"
        case "$state" in
            "running healthy") break ;;
            *unhealthy) fail "service $service is unhealthy (its logs and health check output follow)" ;;
            exited*|dead*) fail "service $service exited (its logs follow)" ;;
            *" none") fail "service $service has no health check" ;;
        esac
        [ "$(date +%s)" -lt "$deadline" ] || fail "service $service not healthy within ${HEALTH_TIMEOUT}s ($state)"
        sleep 2
    done
    info "$service: healthy after $(( $(date +%s) - t )) s"
done
timing "up until all four healthy" "$(secs $(( $(date +%s) - t )))"

mlflow_port=$(compose port mlflow 5000 | sed 's/.*://')
dashboard_port=$(compose port ray-head 8265 | sed 's/.*://')
/usr/bin/python3 - "$mlflow_port" "$dashboard_port" <<'EOF' || fail "the published ports do not answer on 127.0.0.1"
import sys, urllib.request
for name, port, path in (("MLflow", sys.argv[1], "/health"), ("Ray dashboard", sys.argv[2], "/api/gcs_healthz")):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        print(f"    {name} answers on http://127.0.0.1:{port} ({path}: {r.status})")
EOF

# --- 7. the cluster: the worker's identity ------------------------------------------------
worker=$(cid ray-worker)
worker_host=$(docker inspect -f '{{.Config.Hostname}}' "$worker")
worker_ip=$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$worker")
nodes_json=$(compose exec -T ray-head python -c '
import json, ray
ray.init(address="auto", logging_level="ERROR")
print(json.dumps([{"id": n["NodeID"], "ip": n["NodeManagerAddress"], "alive": n["Alive"],
                   "cpu": n["Resources"].get("CPU", 0)} for n in ray.nodes()]))' 2>"$LOGS/nodes.log" | tail -1) \
    || { cat "$LOGS/nodes.log"; fail "could not list the Ray cluster's nodes from the head"; }
worker_node_id=$(/usr/bin/python3 -c '
import json, sys
nodes = [n for n in json.loads(sys.argv[1]) if n["alive"] and n["ip"] == sys.argv[2]]
print(nodes[0]["id"] if len(nodes) == 1 else "")' "$nodes_json" "$worker_ip")
[ -n "$worker_node_id" ] || fail "the Ray cluster has no live node at the worker's address $worker_ip: $nodes_json"
info "Ray nodes: $nodes_json"
info "worker: host $worker_host, ip $worker_ip, Ray node $worker_node_id"

# --- 8. the sweep, twice ------------------------------------------------------------------
plan_out=$(compose run --rm --no-deps -T --entrypoint "python -m orchestrator" driver \
    plan "$SWEEP" 2>"$LOGS/plan.log") || { cat "$LOGS/plan.log"; fail "orchestrator plan $SWEEP failed in the image"; }
n_trials=$(printf '%s\n' "$plan_out" | sed -n 's/^\([0-9][0-9]*\) trials, tracking.*/\1/p' | head -1)
[ -n "$n_trials" ] || fail "could not read the number of trials from \`orchestrator plan\`: $plan_out"
info "$SWEEP: $n_trials trials"

run_sweep() {  # $1: which run (for messages), $2: its log; the driver's output is shown as it goes
    local t rc
    t=$(date +%s)
    set +e
    timeout "$RUN_TIMEOUT" docker-compose --ansi never -p "$PROJECT" -f "$COMPOSE_FILE_RENDERED" \
        run --rm -T driver run "$SWEEP" --yes 2>&1 | tee "$2" | sed 's/^/    | /'
    rc=${PIPESTATUS[0]}
    set -e
    [ "$rc" = 0 ] || fail "the $1 exited $rc (its output is above and in $2)"
    elapsed=$(( $(date +%s) - t ))
}

step "docker-compose run --rm driver run $SWEEP --yes (the first run: $n_trials trials)"
run_sweep "first run" "$LOGS/run1.log"
timing "first run ($n_trials trials)" "$(secs "$elapsed")"

check_mlflow() {  # every trial: one run, FINISHED, on the worker, with the build's commit
    compose exec -T -e EXPECT_TRIALS="$n_trials" -e EXPECT_COMMIT="$GIT_COMMIT" \
        -e EXPECT_HOST="$worker_host" -e EXPECT_IP="$worker_ip" -e EXPECT_NODE="$worker_node_id" \
        -e SWEEP_NAME="$SWEEP_NAME" mlflow python - <<'EOF'
import os, sys, tempfile
from collections import Counter
from mlflow.tracking import MlflowClient

client = MlflowClient("http://localhost:5000")   # the server, its store in Postgres
exp = client.get_experiment_by_name(os.environ["SWEEP_NAME"])
assert exp is not None, f"no experiment {os.environ['SWEEP_NAME']!r} in the MLflow server"
found = client.search_runs([exp.experiment_id], max_results=1000)
runs = [r for r in found if "cell_key" not in r.data.tags]   # a cell's parent run is not a trial
keys = Counter(r.data.tags.get("trial_key") for r in runs)
expected = {"sweep": os.environ["SWEEP_NAME"], "git_commit": os.environ["EXPECT_COMMIT"],
            "host": os.environ["EXPECT_HOST"], "node_ip": os.environ["EXPECT_IP"],
            "ray_node_id": os.environ["EXPECT_NODE"]}
problems, wrong, n_artifacts = [], Counter(), 0
if None in keys:
    problems.append(f"{keys[None]} run(s) without a trial_key tag")
if len(keys) != int(os.environ["EXPECT_TRIALS"]):
    problems.append(f"{len(keys)} trial keys in MLflow, expected {os.environ['EXPECT_TRIALS']}")
problems += [f"trial {k}: {n} runs" for k, n in keys.items() if k and n > 1]
for r in runs:
    tags = r.data.tags
    name = f"run {r.info.run_name} ({tags.get('trial_key')})"
    if r.info.status != "FINISHED":
        problems.append(f"{name}: status {r.info.status}")
    if not r.data.metrics:
        problems.append(f"{name}: no metrics")
    for tag, want in expected.items():
        if tags.get(tag) != want:
            wrong[f"{tag}={tags.get(tag)!r}, expected {want!r}"] += 1
    artifacts = [a.path for a in client.list_artifacts(r.info.run_id)]
    n_artifacts += len(artifacts)
    for path in artifacts[:1]:    # served by the server (--serve-artifacts) from its volume
        with tempfile.TemporaryDirectory() as tmp:
            if not os.path.exists(client.download_artifacts(r.info.run_id, path, tmp)):
                problems.append(f"{name}: artifact {path} listed but not downloadable")
    print(f"    {r.info.run_name:<28} {tags.get('trial_key')}  {r.info.status}  host={tags.get('host')}"
          f"  git_commit={tags.get('git_commit', '')[:12]}  metrics={len(r.data.metrics)}"
          f"  artifacts={len(artifacts)}")
problems += [f"{n} of {len(runs)} runs: {what}" for what, n in wrong.items()]
if problems:
    print("MLflow check failed:\n  " + "\n  ".join(problems), file=sys.stderr)
    sys.exit(1)
print(f"    {len(runs)} runs, one per trial, all FINISHED on the worker, each with"
      f" git_commit={os.environ['EXPECT_COMMIT']}; {n_artifacts} artifacts, read back through the server;"
      f" {len(found) - len(runs)} cell run(s) above them")
EOF
}
step "checking the MLflow server's store"
check_mlflow || fail "the MLflow runs are not what the first run should leave (above)"

step "docker-compose run --rm driver run $SWEEP --yes (again: must launch nothing)"
run_sweep "second run" "$LOGS/run2.log"
grep -q "nothing to run: every trial is FINISHED in MLflow." "$LOGS/run2.log" \
    || fail "the second run did not say 'nothing to run: every trial is FINISHED in MLflow.'"
timing "second run (nothing to run)" "$(secs "$elapsed")"
check_mlflow >/dev/null || fail "the second run changed the MLflow runs"
info "the second run launched nothing; MLflow still holds one FINISHED run per trial"
