# Ved in a container. UNTESTED: no container runtime is available where Ved is developed,
# so this file has never been built; the steps are those of `cargo install --path` and
# .ci/deps. Build: docker build -t ved . ; run: docker run -p 7410:7410 -v ved-state:/var/lib/ved ved
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo install --locked --path crates/ved-cli --root /out

FROM debian:bookworm-slim
# nftables and iproute2 for the firewall adapter; procps for the process adapter's tools.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nftables iproute2 procps ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/bin/ved /usr/local/bin/ved
COPY examples /usr/share/ved/examples
VOLUME /var/lib/ved
EXPOSE 7410
# Listen on every interface inside the container; set VED_API_TOKEN to allow writes.
ENTRYPOINT ["ved", "run", "--data-dir", "/var/lib/ved", "--listen", "0.0.0.0:7410"]
CMD ["/usr/share/ved/examples/worker_pool.ved"]
