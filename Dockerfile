# syntax=docker/dockerfile:1
# The dalc image: one binary, run as `dalc gateway` or `dalc worker` (see k8s/).
#
#   docker build -t dalc:dev .
#
# Stages: chef (toolchain + cargo-chef) -> planner (dependency recipe from the manifests)
# -> builder (dependencies in their own cached layer, then our crates) -> runtime (slim Debian).
# No protoc is needed (protox compiles the protos in Rust); dalc-calc's libdecNumber is C,
# built by `cc` with the gcc that the rust image ships.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS chef
# cargo-chef caches the dependency build in a layer of its own, keyed by the manifests only,
# so editing our sources does not rebuild the ~300 dependencies.
RUN cargo install cargo-chef --version 0.1.78 --locked
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json --bin dalc

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json --bin dalc
COPY . .
RUN cargo build --release --locked --bin dalc \
    && install -D -m 0755 target/release/dalc /out/dalc

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
# ca-certificates: for amqps:// and TLS to PostgreSQL. Versions are left to the Debian release
# pinned above: security updates should flow in on rebuild.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 dalc \
    && useradd --system --uid 10001 --gid dalc --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin dalc
COPY --from=builder /out/dalc /usr/local/bin/dalc
# Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
WORKDIR /tmp
# 50051: gRPC (gateway). 8080: HTTP/JSON (gateway, DALC_HTTP_LISTEN). 9090: Prometheus metrics
# (DALC_METRICS_LISTEN).
EXPOSE 50051 8080 9090
ENTRYPOINT ["dalc"]
CMD ["--help"]
