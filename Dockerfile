# One image for both roles of a gRPC deployment: the command decides.
#   docker run fedwarden:0.1.0 server /etc/fedwarden/config/run.toml --identity ... --store ...
#   docker run fedwarden:0.1.0 client --server HOST:8443 --data /data/client.npz --identity ...
# Build and use: deploy/README.md.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/fedwarden
ENV PATH=/opt/fedwarden/bin:$PATH
# The CPU build of PyTorch first, so the torch extra's range installs nothing more.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
WORKDIR /build
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install ".[torch]"

FROM python:3.11-slim
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
