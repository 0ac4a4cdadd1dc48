# Small runtime image: the release binary on Debian slim.
#
# .dockerignore keeps target/, data/ and .git out of the build context.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p crablet

FROM debian:bookworm-slim
COPY --from=build /src/target/release/crablet /usr/local/bin/crablet
USER nobody
EXPOSE 8080
# Readiness over plain HTTP with the binary itself: the image has no curl.
HEALTHCHECK --interval=5s --timeout=6s --start-period=30s --retries=3 \
    CMD ["crablet", "health", "--url", "http://127.0.0.1:8080"]
ENTRYPOINT ["crablet"]
CMD ["serve"]
