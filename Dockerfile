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
ENTRYPOINT ["deadline-notifier"]
CMD ["serve", "--config", "/app/config/notifier.toml"]
