# syntax=docker/dockerfile:1
#
# freestack's model server: Seldon Core 1.17.1's Python wrapper (seldon-core-microservice) running
# include/serving/Model.py, which loads the registry version named by FREESTACK_MODEL_URI. This is the
# image a SeldonDeployment made by freestack.serving.k8s runs (deploy.kubernetes.image).
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

COPY include/serving/requirements.txt /tmp/serving-requirements.txt
RUN pip install -r /tmp/serving-requirements.txt && rm /tmp/serving-requirements.txt

# the freestack package, for the model loader (freestack.ml, freestack.serving.server, freestack.settings); --no-deps: its
# Airflow-side dependencies stay out, the serving requirements above are all the loader needs
COPY pyproject.toml README.md /src/
COPY plugins/freestack /src/plugins/freestack
RUN pip install --no-deps /src && rm -rf /src

# a numeric non-root user, so that runAsNonRoot can be verified by the kubelet
RUN groupadd --system --gid 1000 seldon \
    && useradd --system --uid 1000 --gid 1000 --create-home --home-dir /home/seldon --shell /usr/sbin/nologin seldon \
    && mkdir -p /app \
    && chown 1000:1000 /app
WORKDIR /app
COPY --chown=1000:1000 include/serving/Model.py /app/Model.py
USER 1000:1000

# REST (the predictor's "http" port), gRPC, Prometheus metrics. seldon-core 1.17.1 defaults gRPC to 5000
# outside Kubernetes; 9500 is what Seldon's operator assigns (and sets through the same variable) in a cluster.
ENV MODEL_NAME=Model \
    SERVICE_TYPE=MODEL \
    PREDICTIVE_UNIT_HTTP_SERVICE_PORT=9000 \
    PREDICTIVE_UNIT_GRPC_SERVICE_PORT=9500 \
    PREDICTIVE_UNIT_METRICS_SERVICE_PORT=6000 \
    HOME=/home/seldon
EXPOSE 9000 9500 6000

HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9000/health/ping', timeout=2)"]

# exec: the server is PID 1 and receives SIGTERM from the kubelet
CMD ["sh", "-c", "exec seldon-core-microservice \"$MODEL_NAME\" --service-type \"$SERVICE_TYPE\""]
