#!/usr/bin/env bash
# docker-compose.yml for real: `docker compose up --build` with 2 workers, the four user flows from outside
# (.ci/compose_flows.py: synthesize, embed + verify, a zip job to completion, a worker container SIGKILLed mid-job),
# the GPU variant (docker-compose.gpu.yml, docker/Dockerfile.gpu) built, then everything taken down.
# Docker + Compose v2 are installed with $LRFACE_DOCKER_SETUP (default ../shared/tools/docker-local.sh) when
# missing. Without Docker and no way to install it the test is skipped, except with CI=true: then it fails.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv-test/bin/python}
started=$(date +%s)

give_up() {
  echo "compose test: $1" >&2
  if [ "${CI:-}" = true ]; then exit 1; fi
  echo "compose test: SKIPPED (set CI=true to make this a failure)" >&2
  exit 0
}

docker_ok() { docker info >/dev/null 2>&1 && docker compose version >/dev/null 2>&1; }
if ! docker_ok; then
  setup=${LRFACE_DOCKER_SETUP:-../shared/tools/docker-local.sh}
  if [ -f "$setup" ] && [ "$(id -u)" = 0 ]; then
    echo "compose test: installing Docker with $setup"
    bash "$setup" || give_up "installing Docker with $setup failed"
  else
    give_up "Docker and Compose v2 are not available, and $setup (root needed) cannot install them"
  fi
fi
docker_ok || give_up "Docker is still not usable after the set-up"

export COMPOSE_PROJECT_NAME="lrface-ci-$$"
export LRFACE_API_PORT=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# A SIGKILLed worker's task is handed out again after the visibility timeout: short here, so the flow is quick.
export LRFACE_BROKER_VISIBILITY_TIMEOUT=20 LRFACE_JOB_STALL_TIMEOUT=30 LRFACE_CHUNK_SIZE=4
logs=${COMPOSE_LOGS:-/tmp/$COMPOSE_PROJECT_NAME.log}
down() {
  docker compose logs --no-color --timestamps >"$logs" 2>&1 || true
  docker compose down -v --remove-orphans >/dev/null 2>&1 || true
}
trap down EXIT

echo "compose test: docker compose up --build (2 workers), project $COMPOSE_PROJECT_NAME, API on 127.0.0.1:$LRFACE_API_PORT"
if ! docker compose up -d --build --scale worker=2 --wait --wait-timeout 600; then
  docker compose ps -a; docker compose logs --no-color --tail 80
  echo "compose test: FAILED (the stack did not come up healthy)" >&2
  exit 1
fi
up=$(date +%s)
"$PY" .ci/compose_flows.py --base-url "http://127.0.0.1:$LRFACE_API_PORT" --project "$COMPOSE_PROJECT_NAME"
rc=$?
flows=$(date +%s)
if [ "$rc" -ne 0 ]; then
  echo "compose test: FAILED (flows); the stack's logs are in $logs" >&2
  exit "$rc"
fi
down  # (before the GPU build: the stack is not needed for it)

# The GPU variant: built when LRFACE_CI_GPU_BUILD=1 or the machine has a GPU (then also run on it); off by
# default because the build (CUDA base, onnxruntime-gpu) took ~20 minutes on this project's 2-core machine.
if [ "${LRFACE_CI_GPU_BUILD:-0}" != 1 ] && ! { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }; then
  done_at=$(date +%s)
  echo "compose test: passed; up (build + healthy) $((up - started)) s, flows $((flows - up)) s, total $((done_at - started)) s" \
       "(GPU image not built: LRFACE_CI_GPU_BUILD=1 builds it)"
  exit 0
fi
# (run on a GPU when the machine has one). With no registry, a stand-in for the CUDA base
# image (Debian, no CUDA libraries) checks everything else of the build: packages, onnxruntime-gpu's CUDA
# provider compiled in, the non-root user.
cuda_base=$(awk '/^FROM /{print $2; exit}' docker/Dockerfile.gpu)
if ! docker image inspect "$cuda_base" >/dev/null 2>&1 && ! docker pull -q "$cuda_base" >/dev/null 2>&1; then
  if docker image inspect local/bookworm:base >/dev/null 2>&1; then
    echo "compose test: $cuda_base cannot be pulled; building the GPU image on a Debian stand-in (no CUDA libraries)"
    printf 'FROM local/bookworm:base\nLABEL org.lrface.stand-in=true\n' | docker build -q -t "$cuda_base" - >/dev/null
  fi
fi
docker compose -f docker-compose.yml -f docker-compose.gpu.yml build api || { echo "compose test: FAILED (GPU image build)" >&2; exit 1; }
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  docker run --rm --gpus all --entrypoint python lrface:gpu -c \
    "import onnxruntime as o; from lrface.core.onnx_model import execution_providers as e; print(e('auto'))" \
    || { echo "compose test: FAILED (GPU image on the GPU)" >&2; exit 1; }
fi
done_at=$(date +%s)
echo "compose test: passed; up (build + healthy) $((up - started)) s, flows $((flows - up)) s, GPU build $((done_at - flows)) s, total $((done_at - started)) s"
