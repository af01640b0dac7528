# One image for both roles of a gRPC deployment: the command decides.
#   docker run fedwarden:0.1.0 server /etc/fedwarden/config/run.toml --identity ... --store ...
#   docker run fedwarden:0.1.0 client --server HOST:8443 --data /data/client.npz --identity ...
# Build and use: deploy/README.md.
#
# BASE is any image with Python 3.11 and its venv module (python3 -m venv); the default is the
# official slim image. Where no registry is reachable, deploy/base-image.sh builds one from
# Debian's packages. TORCH_INDEX names the index of the CPU build of PyTorch; an empty one, with
# EXTRAS="", builds an image without PyTorch (NumPy and scikit-learn models only).
ARG BASE=python:3.11-slim

FROM ${BASE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/fedwarden
ENV PATH=/opt/fedwarden/bin:$PATH
# The CPU build of PyTorch first, so the torch extra's range installs nothing more.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN if [ -n "$TORCH_INDEX" ]; then pip install torch==2.13.0 --index-url "$TORCH_INDEX"; fi
WORKDIR /build
COPY pyproject.toml README.md ./
COPY src ./src
ARG EXTRAS=torch
RUN pip install ".${EXTRAS:+[$EXTRAS]}"

FROM ${BASE}
RUN groupadd --system --gid 10001 fedwarden \
    && useradd --system --uid 10001 --gid fedwarden --home-dir /var/lib/fedwarden \
        --shell /usr/sbin/nologin fedwarden \
    && mkdir -p /var/lib/fedwarden /etc/fedwarden \
    && chown fedwarden:fedwarden /var/lib/fedwarden
COPY --from=build /opt/fedwarden /opt/fedwarden
ENV PATH=/opt/fedwarden/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/var/lib/fedwarden \
    MPLCONFIGDIR=/tmp/matplotlib
WORKDIR /var/lib/fedwarden
USER 10001:10001
# 8443: gRPC with mutual TLS; 8080: plain HTTP GET /healthz for probes.
EXPOSE 8443 8080
ENTRYPOINT ["fedwarden"]
CMD ["--help"]
