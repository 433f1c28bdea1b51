# chatdesk's image: built from the clone, a slim runtime with a non-root user. One image for
# every role (`serve --roles …`), `migrate` and `admin` (docker-compose.yml runs them).
#   docker build -t chatdesk:latest .

FROM rust:1-slim-bookworm AS build
WORKDIR /src
# Dependencies first, so a change of chatdesk's own code does not rebuild them.
COPY Cargo.toml Cargo.lock rustfmt.toml ./
COPY crates crates
COPY load-tests load-tests
COPY dashboard dashboard
COPY migrations migrations
COPY flows flows
COPY streams.toml ./
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p chatdesk \
    && cp target/release/chatdesk /usr/local/bin/chatdesk

FROM debian:bookworm-slim
# ca-certificates: providers' and models' HTTPS; curl: the health check on /readyz.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin chatdesk
COPY --from=build /usr/local/bin/chatdesk /usr/local/bin/chatdesk
COPY streams.toml /etc/chatdesk/streams.toml
COPY flows /etc/chatdesk/flows
ENV CHATDESK_STREAMS=/etc/chatdesk/streams.toml \
    CHATDESK_FLOWS=/etc/chatdesk/flows \
    CHATDESK_HTTP_ADDR=0.0.0.0:8080
USER chatdesk
EXPOSE 8080
HEALTHCHECK --interval=5s --timeout=3s --start-period=20s CMD curl -fsS http://127.0.0.1:8080/readyz || exit 1
ENTRYPOINT ["chatdesk"]
CMD ["serve"]
