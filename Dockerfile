# Small runtime image: the release binary on Debian slim.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p crablet

FROM debian:bookworm-slim
COPY --from=build /src/target/release/crablet /usr/local/bin/crablet
USER nobody
EXPOSE 8080
ENTRYPOINT ["crablet", "serve"]
