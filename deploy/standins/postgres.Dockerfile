# Debian's PostgreSQL, started as the official image is: POSTGRES_PASSWORD
# for the postgres user, data in /var/lib/postgresql/data, the scripts in
# /docker-entrypoint-initdb.d run once on an empty volume, password
# authentication from other hosts. The server's own programs come first in
# PATH (Debian's wrappers in /usr/bin look for clusters this image has not).
FROM ticketing-standin/debian:local
# The packages of the base's Debian release, whatever their point release.
# hadolint ignore=DL3008
RUN apt-get update -q \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql \
    && rm -rf /var/lib/apt/lists/* \
    && ln -s /usr/lib/postgresql/*/bin/* /usr/local/bin/ \
    && mkdir -p /var/lib/postgresql/data /docker-entrypoint-initdb.d /var/run/postgresql \
    && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql
COPY postgres-entrypoint /usr/local/bin/postgres-entrypoint
ENV PGDATA=/var/lib/postgresql/data
EXPOSE 5432
ENTRYPOINT ["/usr/local/bin/postgres-entrypoint"]
