#!/usr/bin/env bash
# Build the slim and the local image with podman and run them (`make image-test`; not part of
# `make test`): the slim gateway in front of the simulated backend (`ttc-router sim`, run from
# the same image), driven by the official openai client; the local image on its embedded
# model; then the compose file's gateway and backend with podman-compose when it is installed.
#
# Environment: BASE (the Dockerfile's base image; default: a Debian bookworm base made here
# with debootstrap, since no registry may be reachable), PY (a Python with the `openai`
# package; default .venv/bin/python), SKIP_LOCAL=1 to leave the local image out.
# Every container runs on the host's network and listens on 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PY:-.venv/bin/python}"
BASE="${BASE:-localhost/ttc-base:bookworm}"
TAG="${TAG:-dev}"
SIM_PORT="${SIM_PORT:-18100}" SLIM_PORT="${SLIM_PORT:-18000}" LOCAL_PORT="${LOCAL_PORT:-18001}"
started=()

cleanup() {
  for name in "${started[@]}"; do podman rm -f -t 5 "$name" >/dev/null 2>&1 || true; done
}
trap cleanup EXIT

wait_ready() {  # URL SECONDS CONTAINER: until GET URL answers 200, else the container's log
  local deadline=$((SECONDS + $2))
  until curl -fsS -o /dev/null "$1" 2>/dev/null; do
    if ((SECONDS > deadline)); then
      echo "image-test: $1 not ready after $2 s; the log of $3:" >&2
      podman logs "$3" 2>&1 | tail -30 >&2
      return 1
    fi
    sleep 1
  done
}

run() {  # NAME IMAGE ARGS...: a detached container on the host network, removed at exit
  local name="$1"; shift
  podman rm -f "$name" >/dev/null 2>&1 || true
  started+=("$name")
  podman run -d --name "$name" --network host "$@" >/dev/null
}

size_mb() { echo $(( $(podman image inspect --format '{{.Size}}' "$1") / 1000000 )); }

[[ "$BASE" == localhost/ttc-base:* ]] && deploy/images/base-image.sh "$BASE"
PY="$PY" deploy/images/wheelhouse.sh

podman build --target slim --build-arg BASE="$BASE" -t "localhost/ttc-router-slim:$TAG" .
echo "image-test: slim image $(size_mb "localhost/ttc-router-slim:$TAG") MB"

# The simulated backend and the slim gateway in front of it.
run ttc-image-sim "localhost/ttc-router-slim:$TAG" \
  ttc-router sim --host 127.0.0.1 --port "$SIM_PORT"
wait_ready "http://127.0.0.1:$SIM_PORT/v1/models" 90 ttc-image-sim
run ttc-image-slim --read-only --tmpfs /tmp --tmpfs /data:rw,U \
  -e TTC_UPSTREAM_URL="http://127.0.0.1:$SIM_PORT/v1" -e TTC_HOST=127.0.0.1 \
  -e TTC_PORT="$SLIM_PORT" "localhost/ttc-router-slim:$TAG"
wait_ready "http://127.0.0.1:$SLIM_PORT/ready" 90 ttc-image-slim
"$PY" deploy/images/smoke.py "http://127.0.0.1:$SLIM_PORT/v1"
podman exec ttc-image-slim sleep 0  # the Kubernetes preStop hook runs `sleep`
podman stop -t 60 ttc-image-slim >/dev/null
echo "image-test: slim gateway stopped on SIGTERM, exit code" \
  "$(podman inspect --format '{{.State.ExitCode}}' ttc-image-slim)"

if [[ "${SKIP_LOCAL:-}" != 1 ]]; then
  podman build --target local --build-arg BASE="$BASE" -t "localhost/ttc-router-local:$TAG" .
  echo "image-test: local image $(size_mb "localhost/ttc-router-local:$TAG") MB"
  run ttc-image-local -e TTC_HOST=127.0.0.1 -e TTC_PORT="$LOCAL_PORT" \
    "localhost/ttc-router-local:$TAG"
  wait_ready "http://127.0.0.1:$LOCAL_PORT/ready" 600 ttc-image-local
  "$PY" deploy/images/smoke.py "http://127.0.0.1:$LOCAL_PORT/v1" --max-tokens 16
fi

# The compose file, gateway and simulated backend only: Prometheus and Grafana come from a
# registry. podman-compose is in the `images` extra.
compose="$(dirname "$PY")/podman-compose"
if [[ -x "$compose" ]]; then
  export TTC_IMAGE="localhost/ttc-router-slim:$TAG" TTC_GATEWAY_PORT="$SLIM_PORT"
  (cd deploy && "$compose" -p ttc-image-test up -d backend gateway)
  started+=(ttc-image-test_gateway_1 ttc-image-test_backend_1)
  trap '(cd deploy && "$compose" -p ttc-image-test down -t 10 >/dev/null 2>&1) || true; cleanup' EXIT
  wait_ready "http://127.0.0.1:$SLIM_PORT/ready" 90 ttc-image-test_gateway_1
  "$PY" deploy/images/smoke.py "http://127.0.0.1:$SLIM_PORT/v1"
  echo "image-test: podman-compose ran the gateway and the backend"
else
  echo "image-test: $compose not found (pip install '.[images]'): compose not run"
fi
echo "image-test: passed"
