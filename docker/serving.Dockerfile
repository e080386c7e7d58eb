# syntax=docker/dockerfile:1
#
# freestack's model server, `python -m freestack_server` (Seldon's protocol: seldon-core 1.17.1's REST app
# under freestack's gunicorn worker), serving the registry version named by FREESTACK_MODEL_URI. This is the
# image a SeldonDeployment made by freestack.serving.seldon_deployments runs (deploy.kubernetes.image), and the same
# program and command the local deploy and the tests run.
#
# Build from the repository root (see docker/README.md):
#   docker build -f docker/serving.Dockerfile -t freestack/serving:0.1.0 .
#
# seldon-core 1.17.1 (the last Apache-2.0 release) pins Flask<3, werkzeug<2.3, protobuf<4: it cannot share
# Airflow's environment, so the serving image holds no Airflow at all.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# torch first, from the CPU-only index (the default index's Linux wheels pull in CUDA, gigabytes of it);
# the requirements below then find it installed and keep it
ARG TORCH_VERSION=2.13.0
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch==${TORCH_VERSION}"

COPY plugins/freestack_server/requirements-seldon.txt /tmp/requirements.txt
RUN pip install -r /tmp/requirements.txt && rm /tmp/requirements.txt

# the model server (freestack_server) and the parts of freestack it imports (freestack.ml, the registry's
# names, freestack.settings); --no-deps: the Airflow side's dependencies stay out
COPY pyproject.toml README.md /src/
COPY plugins/freestack /src/plugins/freestack
COPY plugins/freestack_server /src/plugins/freestack_server
RUN pip install --no-deps /src && rm -rf /src

# a numeric non-root user, so that runAsNonRoot can be verified by the kubelet
RUN groupadd --system --gid 1000 seldon \
    && useradd --system --uid 1000 --gid 1000 --create-home --home-dir /home/seldon --shell /usr/sbin/nologin seldon
WORKDIR /home/seldon
USER 1000:1000

# The model server's configuration (docs: the settings reference, FREESTACK_SERVER_*): every listener on
# all interfaces; REST and metrics on the ports Seldon's operator gives a predictor (it sets the same
# PREDICTIVE_UNIT_* variables in a cluster; this runtime serves no gRPC). The model comes from FREESTACK_MODEL_URI, which the manifest
# sets. The local deploy starts the same command with the same variables (tests/unit/serving/test_entrypoint.py).
ENV FREESTACK_SERVER_RUNTIME=seldon \
    FREESTACK_SERVER_HOST=0.0.0.0 \
    PREDICTIVE_UNIT_HTTP_SERVICE_PORT=9000 \
    PREDICTIVE_UNIT_GRPC_SERVICE_PORT=9500 \
    PREDICTIVE_UNIT_METRICS_SERVICE_PORT=6000 \
    HOME=/home/seldon
EXPOSE 9000 6000

HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9000/health/ping', timeout=2)"]

# exec form: the server's supervisor is PID 1, receives SIGTERM from the kubelet and stops gracefully
CMD ["python", "-m", "freestack_server"]
