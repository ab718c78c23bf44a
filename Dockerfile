# The ticketing image: one static-ish binary (glibc only) on a distroless
# base, running as a non-root user. Every mode and every service is the same
# image; the command and environment choose (see README "Deploying").
#
#   docker build -t ticketing .
#   docker run --rm -p 3000:3000 -v ticketing-data:/data ticketing   # all-in-one, embedded
#   docker run --rm ticketing streams plan --nats-url nats://nats:4222
#   docker run --rm -p 4000:4000 ticketing blog       # the blog, all-in-one
#
# The base images are build arguments (a mirror, or local stand-ins: see
# deploy/README.md). The target `prebuilt` puts a binary already built on
# this machine (target/docker/ticketing) on the same runtime base instead of
# building one: that is how CI, which reaches no registry, builds the image.

ARG RUST_IMAGE=docker.io/library/rust:1.95-slim-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

# --- the data directory, owned by the non-root user (no shell needed) ---
FROM scratch AS data
WORKDIR /data

# --- run: distroless/cc (glibc, libgcc and CA certificates, no shell) ---
FROM ${RUNTIME_IMAGE} AS runtime
COPY --from=data --chown=65532:65532 /data /data
ENV HOST=0.0.0.0 \
    PORT=3000 \
    TICKETING_DATA_DIR=/data \
    BLOG_DATA_DIR=/data/blog
USER 65532:65532
EXPOSE 3000
VOLUME ["/data"]
HEALTHCHECK --interval=10s --timeout=4s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/ticketing", "probe", "http://127.0.0.1:3000/readyz"]
ENTRYPOINT ["/usr/local/bin/ticketing"]
CMD ["run"]

# --- a binary built on this machine, on the same runtime ---
FROM runtime AS prebuilt
COPY target/docker/ticketing /usr/local/bin/ticketing

# --- build ---------------------------------------------------------------
FROM ${RUST_IMAGE} AS build
WORKDIR /src
# Dependencies first, so a source change does not refetch the registry.
COPY Cargo.toml Cargo.lock ./
COPY platform ./platform
COPY marketplace ./marketplace
COPY tools ./tools
COPY ticketing ./ticketing
COPY blog ./blog
COPY deploy/streams.yaml ./deploy/streams.yaml
COPY deploy/blog-streams.yaml ./deploy/blog-streams.yaml
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p ticketing \
    && cp target/release/ticketing /usr/local/bin/ticketing

# --- the image users build: the release binary on the runtime ---
FROM runtime
COPY --from=build /usr/local/bin/ticketing /usr/local/bin/ticketing
