# Prometheus from Debian's package: compose's PROMETHEUS_IMAGE where no registry can be reached (CI
# builds it on its mmdebstrap base). Elsewhere compose pulls prom/prometheus, which this mirrors: the
# `prometheus` command, storage in /prometheus, run as nobody.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends prometheus \
    && rm -rf /var/lib/apt/lists/* \
    && install -d -o 65534 -g 65534 -m 0700 /prometheus
USER 65534:65534
WORKDIR /prometheus
ENTRYPOINT ["prometheus"]
