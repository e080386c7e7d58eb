# syntax=docker/dockerfile:1
#
# freestack's Open Inference Protocol server: MLServer 1.7.1 (Apache-2.0) running freestack's runtime
# (freestack.serving.server.oip), which loads the registry version named by MLSERVER_MODEL_URI. This is
# the image a SeldonDeployment with protocol: v2 or a KServe InferenceService made by freestack runs
# (deploy.runtime: mlserver; deploy.kubernetes.mlserver_image).
#
# Build from the repository root (see docker/README.md):
#   docker build -f docker/mlserver.Dockerfile -t freestack/mlserver:0.1.0 .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# torch first, from the CPU-only index (the default index's Linux wheels pull in CUDA, gigabytes of it)
ARG TORCH_VERSION=2.13.0
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch==${TORCH_VERSION}"

COPY include/serving/mlserver-requirements.txt /tmp/mlserver-requirements.txt
RUN pip install -r /tmp/mlserver-requirements.txt && rm /tmp/mlserver-requirements.txt

# the freestack package, for the runtime (freestack.serving.server, freestack.ml, freestack.settings); --no-deps:
# its Airflow-side dependencies stay out
COPY pyproject.toml README.md /src/
COPY plugins/freestack /src/plugins/freestack
RUN pip install --no-deps /src && rm -rf /src

RUN groupadd --system --gid 1000 mlserver \
    && useradd --system --uid 1000 --gid 1000 --create-home --home-dir /home/mlserver --shell /usr/sbin/nologin mlserver \
    && mkdir -p /opt/freestack/models \
    && chown -R 1000:1000 /opt/freestack
USER 1000:1000
WORKDIR /opt/freestack

# REST, gRPC (the ports Seldon's operator gives a predictor), Prometheus metrics; the model comes from the
# MLSERVER_MODEL_* variables the manifest sets
ENV MLSERVER_HTTP_PORT=9000 \
    MLSERVER_GRPC_PORT=9500 \
    MLSERVER_METRICS_PORT=6000 \
    MLSERVER_PARALLEL_WORKERS=0 \
    MLSERVER_MODEL_IMPLEMENTATION=freestack.serving.server.oip.FreestackRuntime \
    HOME=/home/mlserver
EXPOSE 9000 9500 6000

HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9000/v2/health/ready', timeout=2)"]

CMD ["python", "-m", "freestack.serving.server.oip_server", "/opt/freestack/models"]
