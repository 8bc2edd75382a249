# syntax=docker/dockerfile:1
# The builder image is a build arg so a local stand-in can be passed where registries
# are unreachable (scripts/container-smoke.sh makes one). The runtime is `scratch`:
# one static binary, the CA bundle and a passwd line, so the image is ~the binary.
ARG RUST_IMAGE=rust:1.95-bookworm

FROM ${RUST_IMAGE} AS build
WORKDIR /src
# Static glibc (static-pie): runs on scratch with no shared libraries. The explicit
# --target keeps build scripts and proc-macros dynamic, as they must be.
ENV RUSTFLAGS="-C target-feature=+crt-static" \
    CARGO_BUILD_TARGET=x86_64-unknown-linux-gnu
# Dependencies first, in their own layer: source edits don't rebuild the AWS SDK.
COPY Cargo.toml Cargo.lock rust-toolchain.toml ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src
COPY src src
COPY templates templates
RUN touch src/main.rs src/lib.rs && cargo build --release --locked \
    && mkdir -p /out/etc/ssl/certs /out/data /out/tmp /out/app/config \
    && cp target/x86_64-unknown-linux-gnu/release/deadline-notifier /out/ \
    && cp /etc/ssl/certs/ca-certificates.crt /out/etc/ssl/certs/ \
    && printf 'notifier:x:10001:10001::/app:/sbin/nologin\n' > /out/etc/passwd \
    && printf 'notifier:x:10001:\n' > /out/etc/group \
    && chown 10001:10001 /out/data && chmod 1777 /out/tmp \
    && /out/deadline-notifier --version

FROM scratch
COPY --from=build /out/etc /etc
COPY --from=build /out/tmp /tmp
COPY --from=build --chown=10001:10001 /out/data /data
COPY --from=build /out/deadline-notifier /usr/local/bin/deadline-notifier
COPY templates /app/templates
COPY config/example.toml /app/config/example.toml
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
WORKDIR /app
USER 10001:10001
# sled data: mount a volume here and set [store] path = "/data/notifier.sled".
VOLUME /data
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/deadline-notifier", "healthcheck", "--url", "http://127.0.0.1:8080/healthz"]
ENTRYPOINT ["/usr/local/bin/deadline-notifier"]
CMD ["serve", "--config", "/app/config/notifier.toml"]
