# syntax=docker/dockerfile:1
# The cloud server (`mobius-server-cloud`, with KMS sealing; Postgres only). Build from the repository root:
#   docker build -f deploy/docker/server-cloud.Dockerfile -t mobius-server-cloud .
# The final image is distroless (no shell, no package manager), runs as
# the non-root user 65532 and writes only to /var/lib/mobius (a volume),
# so it runs with a read-only root file system.

FROM rust:1.95-slim-bookworm AS build
# Cloud features to build in (see editions/cloud/Cargo.toml).
ARG FEATURES=kms
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p mobius-cloud --bin mobius-server-cloud --features "${FEATURES}" \
    && install -D -m 0755 target/release/mobius-server-cloud /out/mobius-server \
    && install -d -o 65532 -g 65532 -m 0700 /out/data

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/mobius-server /usr/local/bin/mobius-server
COPY --from=build --chown=65532:65532 /out/data /var/lib/mobius
USER 65532:65532
ENV MOBIUS_DATA_DIR=/var/lib/mobius \
    MOBIUS_LISTEN=0.0.0.0:8080 \
    MOBIUS_DEVICE_LISTEN=0.0.0.0:8443 \
    MOBIUS_LOG_FORMAT=json
VOLUME ["/var/lib/mobius"]
EXPOSE 8080 8443
# Distroless has no curl: the binary probes its own /healthz.
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["/usr/local/bin/mobius-server", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/mobius-server"]
CMD ["serve"]
