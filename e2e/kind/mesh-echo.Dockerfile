# syntax=docker/dockerfile:1
# The scenario suite's sample app, `ghcr.io/mesh-rs/mesh-echo:dev`: the
# same mesh-echo binary the local backend runs, plus curl (the suite reads
# a pod's proxy admin API from inside it). Build from the repository root:
#   docker build -f e2e/kind/mesh-echo.Dockerfile -t ghcr.io/mesh-rs/mesh-echo:dev .
ARG RUST_VERSION=1.95
FROM rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p e2e --bin mesh-echo \
    && install -D target/release/mesh-echo /out/mesh-echo

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends curl ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/mesh-echo /usr/local/bin/mesh-echo
USER 1000:1000
ENTRYPOINT ["/usr/local/bin/mesh-echo"]
