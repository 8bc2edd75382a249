# syntax=docker/dockerfile:1
# Base images are build args so a local stand-in can be passed where registries
# are unreachable, e.g. --build-arg RUNTIME_IMAGE=localhost/bookworm-minbase:local
ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS build
WORKDIR /src
# Dependencies first, in their own layer: source edits don't rebuild the AWS SDK.
COPY Cargo.toml Cargo.lock rust-toolchain.toml ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src
COPY src src
COPY templates templates
RUN touch src/main.rs src/lib.rs && cargo build --release --locked

FROM ${RUNTIME_IMAGE}
# Debian's ca-certificates tracks the distribution; pinning its version would only break rebuilds.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin notifier \
    && mkdir -p /data /app/config \
    && chown notifier /data
WORKDIR /app
COPY --from=build /src/target/release/deadline-notifier /usr/local/bin/deadline-notifier
COPY templates /app/templates
COPY config/example.toml /app/config/example.toml
USER 10001
# sled data: mount a volume here and set [store] path = "/data/notifier.sled".
VOLUME /data
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["deadline-notifier", "healthcheck", "--url", "http://127.0.0.1:8080/healthz"]
ENTRYPOINT ["deadline-notifier"]
CMD ["serve", "--config", "/app/config/notifier.toml"]
