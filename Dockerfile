# Multi-stage build: compile the release binary, ship it on a slim base as a non-root user.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY tests ./tests
COPY config ./config
RUN cargo build --release --locked --bin shardgate

FROM debian:bookworm-slim
# The system's CA certificates: [pools.upstream_tls] without `ca` trusts them.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin shardgate
COPY --from=build /src/target/release/shardgate /usr/local/bin/shardgate
COPY config/shardgate.toml /etc/shardgate/shardgate.toml
USER 10001:10001
ENV SHARDGATE_CONFIG=/etc/shardgate/shardgate.toml
# 8080: the reference pool's listener; 9901: admin (metrics, status page). Inside a container
# the admin listener must bind a non-loopback address to be reachable: set [admin] listen.
EXPOSE 8080 9901
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/shardgate"]
CMD ["run"]
