# What gcr.io/distroless/cc-debian12:nonroot gives the binary: glibc,
# libgcc, CA certificates and the non-root user 65532. (It also has a shell,
# which distroless has not; the image needs none.)
FROM ticketing-standin/debian:local
# The packages of the base's Debian release, whatever their point release.
# hadolint ignore=DL3008
RUN apt-get update -q \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd -g 65532 nonroot && useradd -u 65532 -g 65532 -d /home/nonroot -m nonroot
USER 65532:65532
