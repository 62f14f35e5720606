# Multi-stage image of the LP-DETR tools (the gRPC server and a CUDA build
# stage come with the service and deployment work).
# Build:  docker build -t lpdetr .
FROM debian:bookworm AS build
WORKDIR /src
COPY scripts/install_deps.sh scripts/install_deps.sh
RUN scripts/install_deps.sh
COPY . .
RUN cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DLPDETR_BUILD_TESTS=OFF \
      -DLPDETR_BUILD_SERVER=OFF \
 && cmake --build build -j"$(nproc)"

FROM debian:bookworm-slim AS runtime
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends libtorch1.13 libopenblas0-pthread \
      libopencv-imgcodecs406 libopencv-imgproc406 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home /nonexistent lpdetr
COPY --from=build /src/build/bin/lpdetr-model /usr/local/bin/lpdetr-model
USER 10001
ENTRYPOINT ["/usr/local/bin/lpdetr-model"]
