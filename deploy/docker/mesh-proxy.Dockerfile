# syntax=docker/dockerfile:1
# The data plane image, `<hub>/mesh-proxy:<tag>`: the sidecar, the gateways
# and the capture init container (`mesh-proxy iptables ...`, which runs
# iptables-save/iptables-restore, hence iptables and iproute2 here).
# Build from the repository root:
#   docker build -f deploy/docker/mesh-proxy.Dockerfile -t ghcr.io/mesh-rs/mesh-proxy:0.1.0 .
# Runs as UID/GID 1337: the capture rules exempt that UID's traffic, so the
# proxy's own connections are never redirected back into it.

ARG RUST_VERSION=1.95
FROM rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p mesh-proxy --bin mesh-proxy \
    && install -D target/release/mesh-proxy /out/mesh-proxy

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends iptables iproute2 ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/mesh-proxy /usr/local/bin/mesh-proxy
USER 1337:1337
# Health/status, Prometheus, outbound and inbound capture.
EXPOSE 15021 15090 15001 15006
ENTRYPOINT ["/usr/local/bin/mesh-proxy"]
