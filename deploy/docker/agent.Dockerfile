# syntax=docker/dockerfile:1
# The agent (`mobius-agent`), for containers that manage their host or for
# fleet simulations. Build from the repository root:
#   docker build -f deploy/docker/agent.Dockerfile -t mobius-agent .
# Its state (key, certificate) lives in /var/lib/mobius-agent (a volume);
# the root file system can be read-only.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p mobius-agent --bin mobius-agent \
    && install -D -m 0755 target/release/mobius-agent /out/mobius-agent \
    && install -d -o 65532 -g 65532 -m 0700 /out/state

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/mobius-agent /usr/local/bin/mobius-agent
COPY --from=build --chown=65532:65532 /out/state /var/lib/mobius-agent
USER 65532:65532
VOLUME ["/var/lib/mobius-agent"]
# The agent has no listener; it is healthy while it has a certificate.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/mobius-agent", "status", "--state-dir", "/var/lib/mobius-agent"]
ENTRYPOINT ["/usr/local/bin/mobius-agent"]
CMD ["run", "--state-dir", "/var/lib/mobius-agent"]
