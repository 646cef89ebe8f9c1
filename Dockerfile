# warmtls in a container: a multi-stage build (the Rust toolchain stays in the
# build stage), a slim Debian runtime, a non-root user, the session cache on a
# volume so it outlives the container, SIGTERM to drain, and a health check
# against the metrics page.
#
#   docker build -t warmtls .
#   docker run -d --name warmtls -p 443:8443 -p 127.0.0.1:9443:9443 \
#       -v warmtls-cache:/var/lib/warmtls warmtls --backend app.internal:8080
#
# Under the container runtime's default seccomp profile io_uring is blocked:
# the endpoint runs its epoll driver and says so once at start-up (README,
# "Running in containers"). Flags after the image name are `warmtls serve` flags.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p warmtls --bins

FROM debian:bookworm-slim
# curl: the health check.
RUN apt-get update \
    && apt-get install -y --no-install-recommends curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/warmtls \
        --shell /usr/sbin/nologin warmtls \
    && install -d -m 0700 -o warmtls -g warmtls /var/lib/warmtls
COPY --from=build /src/target/release/warmtls /src/target/release/warmtls-cache /usr/local/bin/
USER warmtls
# The cache file (0600, this user's) and the self-signed certificate made on
# first start live here; a named volume keeps them across containers.
VOLUME /var/lib/warmtls
EXPOSE 8443 9443
# SIGTERM: stop accepting, drain open connections (drain_timeout), flush the
# cache file, exit 0. Give `docker stop -t` more than drain_timeout.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=3s --start-period=15s --retries=3 \
    CMD curl -fsS -o /dev/null http://127.0.0.1:9443/metrics || exit 1
ENTRYPOINT ["warmtls", "serve", "--listen", "0.0.0.0:8443", \
    "--cache", "/var/lib/warmtls/sessions.cache", \
    "--metrics-listen", "0.0.0.0:9443", "--log-format", "json"]
CMD ["--backend", "127.0.0.1:8080"]
