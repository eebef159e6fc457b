# The worker as a container image, for machines that can pull images: build the shipped binary (Cargo profile
# `dist`) in the Rust image, run it on Debian slim. Where images cannot be pulled, scripts/worker-image.sh builds
# Dockerfile.offline instead (same runtime image, from a binary built on the host).
#
#   docker build -t terminal-bench-worker .
#
# The container runs task containers on the host's Docker through the mounted socket (-v
# /var/run/docker.sock:/var/run/docker.sock), which gives it root-equivalent control of the host: see the README's
# "Container image" section.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --profile dist --locked --bin terminal-bench-worker \
    && cp target/dist/terminal-bench-worker /terminal-bench-worker

FROM debian:bookworm-slim
# The S3 and OpenAI clients verify TLS against the system's CA bundle.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /terminal-bench-worker /usr/local/bin/terminal-bench-worker
# Scratch space: task archives are unpacked here and sent to the Docker daemon as tar streams, so nothing here has
# to be visible to the host; a volume keeps it off the container's writable layer.
ENV WORKER_WORK_DIR=/var/lib/terminal-bench-worker
RUN mkdir -p /var/lib/terminal-bench-worker
VOLUME /var/lib/terminal-bench-worker
WORKDIR /var/lib/terminal-bench-worker
# The binary is PID 1 and handles SIGTERM itself: it stops claiming, lets running jobs finish for
# WORKER_SHUTDOWN_GRACE_SECS (30), then releases them to the queue and exits 0. Give `docker stop` more than that.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=20s --start-period=15s --retries=3 \
    CMD ["/usr/local/bin/terminal-bench-worker", "health"]
ENTRYPOINT ["/usr/local/bin/terminal-bench-worker"]
CMD ["worker"]
