# syntax=docker/dockerfile:1
# The portcullis image: built by cargo in the official Rust image, run on
# distroless "cc" (glibc, libgcc, CA certificates; no shell, no package
# manager) as the non-root user 65532.
#
#   docker build -t portcullis .
#   docker run --rm -p 50051:50051 portcullis                 # SQLite in /data
#   docker run --rm portcullis migrate                         # with PORTCULLIS_DATABASE_URL
#
# The Helm chart (helm/portcullis) runs this image with `serve` and `migrate`;
# tests/it/chart_run.rs starts the binary with this file's ENTRYPOINT, CMD,
# ENV and USER combined with the chart's container, as Kubernetes would.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# The registry and target folders are build caches, not image layers.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --locked --release --bin portcullis \
    && install -D -m 0755 target/release/portcullis /out/usr/local/bin/portcullis \
    && install -d -m 0750 /out/data

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/usr/local/bin/portcullis /usr/local/bin/portcullis
# The working folder: the default SQLite database (and its key file) lands
# here when no database_url is given.
COPY --from=build --chown=65532:65532 /out/data /data
WORKDIR /data
USER 65532:65532
# Inside a container the port must be reachable from outside it.
ENV PORTCULLIS_LISTEN_ADDR=0.0.0.0:50051
EXPOSE 50051
ENTRYPOINT ["portcullis"]
CMD ["serve"]
