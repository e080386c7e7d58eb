# syntax=docker/dockerfile:1
#
# freestack's Open Inference Protocol server: MLServer 1.7.1 (Apache-2.0) running freestack's runtime
# (freestack_server.mlserver.runtime), which loads the registry version named by FREESTACK_MODEL_URI. This is
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

COPY plugins/freestack_server/requirements-mlserver.txt /tmp/mlserver-requirements.txt
RUN pip install -r /tmp/mlserver-requirements.txt && rm /tmp/mlserver-requirements.txt

# the freestack package, for the runtime (freestack_server, freestack.ml, freestack.settings); --no-deps:
# its Airflow-side dependencies stay out
COPY pyproject.toml README.md /src/
COPY plugins/freestack /src/plugins/freestack
COPY plugins/freestack_server /src/plugins/freestack_server
RUN pip install --no-deps /src && rm -rf /src

RUN groupadd --system --gid 1000 mlserver \
    && useradd --system --uid 1000 --gid 1000 --create-home --home-dir /home/mlserver --shell /usr/sbin/nologin mlserver \
    && mkdir -p /opt/freestack/models \
    && chown -R 1000:1000 /opt/freestack
USER 1000:1000
WORKDIR /opt/freestack

# The model server's configuration (docs: the settings reference, FREESTACK_SERVER_*): the mlserver
# runtime, every listener on all interfaces, REST, gRPC and metrics on the ports Seldon's operator gives a
# predictor (it sets the same PREDICTIVE_UNIT_* variables in a cluster; under KServe these defaults hold).
# The model comes from FREESTACK_MODEL_URI, which the manifest sets.
ENV FREESTACK_SERVER_RUNTIME=mlserver \
    FREESTACK_SERVER_HOST=0.0.0.0 \
    FREESTACK_SERVER_WORKDIR=/opt/freestack/models \
    PREDICTIVE_UNIT_HTTP_SERVICE_PORT=9000 \
    PREDICTIVE_UNIT_GRPC_SERVICE_PORT=9500 \
    PREDICTIVE_UNIT_METRICS_SERVICE_PORT=6000 \
    HOME=/home/mlserver
EXPOSE 9000 9500 6000

HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9000/v2/health/ready', timeout=2)"]

# the same command as every other target: the supervisor is PID 1 and stops MLServer gracefully on SIGTERM
CMD ["python", "-m", "freestack_server"]
