# syntax=docker/dockerfile:1.7
# The image AWS Batch runs: both mirrorfleet binaries on Debian slim.
#
#   docker build -t mirrorfleet .
#   docker run --rm mirrorfleet mirrorfleet-worker copy --help
#
# Job kinds (the command is set by each Batch job definition):
#   mirrorfleet-controller run           scan the table, enqueue, scale workers
#   mirrorfleet-worker consume           copy images from the SQS queue
#   mirrorfleet-worker copy SRC DEST...  one ad-hoc copy

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
# Cache mounts keep crates and compiled dependencies between builds, so a code
# change rebuilds only the workspace crates.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p mirrorfleet-worker -p mirrorfleet-controller \
    && install -D -m 0755 target/release/mirrorfleet-worker target/release/mirrorfleet-controller -t /out/

FROM debian:bookworm-slim
# CA certificates are deliberately unpinned: the bundle should be the newest.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin mirrorfleet
COPY --from=build /out/ /usr/local/bin/
USER 10001
ENV MIRRORFLEET_LOG_FORMAT=json \
    MIRRORFLEET_PROGRESS=never
ENTRYPOINT []
CMD ["mirrorfleet-worker", "--help"]
