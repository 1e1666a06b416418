# syntax=docker/dockerfile:1
# The control plane image, `<hub>/mesh-control:<tag>`: mesh-control as istiod.
# Build from the repository root:
#   docker build -f deploy/docker/mesh-control.Dockerfile -t ghcr.io/mesh-rs/mesh-control:0.1.0 .
# Runtime is distroless (glibc + libgcc, no shell, no package manager) as
# its `nonroot` user (65532), which the Deployment's securityContext expects.

ARG RUST_VERSION=1.95
FROM rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src
COPY . .
# Caches keep the registry and target/ between builds; the binary is copied
# out because a cache mount is not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p mesh-control --bin mesh-control \
    && install -D target/release/mesh-control /out/mesh-control

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/mesh-control /usr/local/bin/mesh-control
USER 65532:65532
# xDS plaintext, xDS+CA over mTLS, monitoring (/ready, /metrics), injection webhook.
EXPOSE 15010 15012 15014 15017
ENTRYPOINT ["/usr/local/bin/mesh-control"]
