# syntax=docker/dockerfile:1
# One image for every service: order-api, inventory-worker, dlq-service and loadgen.
# compose.yaml picks the binary with `command:`.

# --- Build ------------------------------------------------------------------------------------
FROM rust:1.95-bookworm AS build
WORKDIR /src

# 1. Dependencies only. The manifests and an empty stand-in for each crate are enough for cargo
#    to build every dependency; this layer is reused until Cargo.toml or Cargo.lock change, so
#    editing the code rebuilds only the workspace's own crates.
COPY Cargo.toml Cargo.lock ./
COPY crates/contract/Cargo.toml crates/contract/
COPY crates/shared/Cargo.toml crates/shared/
COPY crates/order-api/Cargo.toml crates/order-api/
COPY crates/inventory-worker/Cargo.toml crates/inventory-worker/
COPY crates/dlq-service/Cargo.toml crates/dlq-service/
COPY crates/loadgen/Cargo.toml crates/loadgen/
COPY crates/test-support/Cargo.toml crates/test-support/
COPY crates/e2e/Cargo.toml crates/e2e/
COPY crates/chaos/Cargo.toml crates/chaos/
COPY crates/rawbench/Cargo.toml crates/rawbench/
RUN for crate in crates/*/; do \
        mkdir -p "$crate/src" && touch "$crate/src/lib.rs" && echo 'fn main() {}' > "$crate/src/main.rs"; \
    done \
    && cargo build --release --locked -p order-api -p inventory-worker -p dlq-service -p loadgen \
    && rm -rf crates/*/src

# 2. The workspace itself (migrations are embedded by sqlx::migrate! at compile time).
COPY crates crates
COPY migrations migrations
# Newer than the stand-ins' build, so cargo rebuilds these crates.
RUN find crates -name '*.rs' -exec touch {} + \
    && cargo build --release --locked -p order-api -p inventory-worker -p dlq-service -p loadgen

# --- Run --------------------------------------------------------------------------------------
FROM debian:bookworm-slim AS runtime
# curl for the healthchecks in compose.yaml; ca-certificates for TLS endpoints if configured.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home app
COPY --from=build /src/target/release/order-api /src/target/release/inventory-worker \
     /src/target/release/dlq-service /src/target/release/loadgen /usr/local/bin/
USER app
# Listen on every interface inside the container; compose publishes what a person needs.
ENV HTTP_ADDR=0.0.0.0:8080
CMD ["order-api"]
