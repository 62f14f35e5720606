# LP-DETR detection service images: lpdetr-server, lpdetr-client,
# lpdetr-model and lpdetr-train with the default model (lp-detr-shapes).
#
# Two variants, each a build stage and a slim runtime stage:
#   gpu (default)  build-gpu   NVIDIA CUDA devel image + a CUDA LibTorch zip
#                  runtime-gpu NVIDIA CUDA base image + the LibTorch libraries
#   cpu            build-cpu   Debian bookworm + Debian's LibTorch 1.13
#                  runtime-cpu Debian bookworm slim + the runtime packages
#
# Build (BuildKit builds only the stages the chosen variant needs):
#   docker build -t lpdetr:cuda \
#     --build-arg LIBTORCH_SHA256=<sha256 of the LibTorch zip> .
#   docker build -t lpdetr:cpu --build-arg VARIANT=cpu .
#   (or --target runtime-gpu / --target runtime-cpu)
#
# Build args:
#   VARIANT              gpu | cpu: which runtime stage the final image is
#   LIBTORCH_URL         the CUDA LibTorch zip (cxx11 ABI, shared, with deps)
#   LIBTORCH_SHA256      its SHA-256; required, the build stops without it
#                        (compute it once: curl -fL "$LIBTORCH_URL" | sha256sum)
#   TORCH_CUDA_ARCH_LIST GPU architectures the CUDA kernels are compiled for
#                        ("8.0;9.0": A100, H100/H200)
#   JOBS                 parallel compile jobs (default: all cores)
#   VERSION, VCS_REF, BUILD_DATE  image labels (org.opencontainers.image.*)
#
# Run:
#   docker run --rm --gpus all -p 50051:50051 -p 9464:9464 lpdetr:cuda
#   docker run --rm -p 50051:50051 -p 9464:9464 lpdetr:cpu
# Checked offline by tests/deploy/check_dockerfile.py (no Docker engine there).

ARG VARIANT=gpu

# ---------------------------------------------------------------------------
# build-cpu: Debian bookworm with Debian's LibTorch 1.13, gRPC 1.51, protobuf
# 3.21, Abseil 20220623 and OpenCV 4.6 (scripts/install_deps.sh, the packages
# the project is developed and tested with). A dated tag pins the snapshot.
# ---------------------------------------------------------------------------
FROM debian:bookworm-20250929 AS build-cpu
ARG JOBS=
WORKDIR /src
COPY scripts/install_deps.sh scripts/install_deps.sh
RUN scripts/install_deps.sh \
 && rm -rf /var/lib/apt/lists/*
COPY . .
RUN cmake -S . -B build -DCMAKE_BUILD_TYPE=Release \
      -DLPDETR_BUILD_TESTS=OFF -DLPDETR_BUILD_SERVER=ON -DLPDETR_WITH_CUDA=OFF \
 && cmake --build build -j"${JOBS:-$(nproc)}" \
      --target lpdetr-server lpdetr-client lpdetr-model lpdetr-train lpdetr_default_model \
 && cmake --install build --prefix /opt/lpdetr --strip

# ---------------------------------------------------------------------------
# runtime-cpu: only the runtime libraries of the four binaries. The names are
# the Debian packages owning what `readelf -d` lists as NEEDED (dpkg -S);
# their dependencies come with them. The ldd check below fails the build when
# a library is missing.
# ---------------------------------------------------------------------------
FROM debian:bookworm-20250929-slim AS runtime-cpu
ARG VERSION=0.1.0
ARG VCS_REF=unknown
ARG BUILD_DATE=unknown
LABEL org.opencontainers.image.title="lpdetr" \
      org.opencontainers.image.description="LP-DETR object detection gRPC service (CPU, Debian LibTorch 1.13)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.created="${BUILD_DATE}" \
      org.opencontainers.image.base.name="docker.io/library/debian:bookworm-20250929-slim"
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      libtorch1.13 libopenblas0-pthread libgomp1 \
      libgrpc++1.51 libprotobuf32 libabsl20220623 \
      libopencv-core406 libopencv-imgproc406 libopencv-imgcodecs406 libopencv-videoio406 \
      libsqlite3-0 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 lpdetr \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/lpdetr --no-create-home \
      --shell /usr/sbin/nologin lpdetr \
 && mkdir -p /var/lib/lpdetr/registry /var/lib/lpdetr/datasets \
 && chown -R 10001:10001 /var/lib/lpdetr
COPY --from=build-cpu /opt/lpdetr/bin /opt/lpdetr/bin
COPY --from=build-cpu /opt/lpdetr/share/lpdetr/models /opt/lpdetr/share/lpdetr/models
RUN missing="$(ldd /opt/lpdetr/bin/* | grep 'not found' || true)"; \
    if [ -n "$missing" ]; then echo "missing runtime libraries:" >&2; echo "$missing" >&2; exit 1; fi
ENV PATH=/opt/lpdetr/bin:$PATH
WORKDIR /var/lib/lpdetr
# 50051: gRPC (Detection, ModelService) and grpc.health.v1 (--grpc_address)
# 9464:  Prometheus /metrics over HTTP (--metrics_address)
# 50052: AdminService, only when an admin token is configured (--admin_address;
#        --admin_token_file or LPDETR_ADMIN_TOKEN); keep it off public networks
EXPOSE 50051 9464 50052
USER 10001:10001
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["/opt/lpdetr/bin/lpdetr-client", "health", "--address", "127.0.0.1:50051", "--timeout", "4"]
ENTRYPOINT ["/opt/lpdetr/bin/lpdetr-server"]
# The server's own defaults for --grpc_address and --metrics_address; the admin
# listener on every interface of the container (it runs only with a token).
# Arguments given to `docker run IMAGE ...` (or Kubernetes `args`) replace these.
CMD ["--grpc_address=0.0.0.0:50051", "--metrics_address=0.0.0.0:9464", "--admin_address=0.0.0.0:50052"]

# ---------------------------------------------------------------------------
# build-gpu: CUDA 12.6 devel on Ubuntu 24.04. Why this tag: 24.04 ships the
# same gRPC 1.51, protobuf 3.21, Abseil 20220623 and OpenCV 4.6 as Debian
# bookworm (what the code is tested with) and CMake 3.28 (>= 3.24 for
# $<LINK_LIBRARY:WHOLE_ARCHIVE>); CUDA 12.6 is the toolkit of the LibTorch
# 2.7.1+cu126 build below, whose kernels cover sm_50..sm_90 (A100, H100/H200)
# and whose driver floor (>= 525 with CUDA minor version compatibility) is
# widespread. nvcc 12.6 supports Ubuntu 24.04's GCC 13.
# ---------------------------------------------------------------------------
FROM nvidia/cuda:12.6.3-devel-ubuntu24.04 AS build-gpu
ARG JOBS=
ARG TORCH_CUDA_ARCH_LIST="8.0;9.0"
ARG LIBTORCH_URL=https://download.pytorch.org/libtorch/cu126/libtorch-cxx11-abi-shared-with-deps-2.7.1%2Bcu126.zip
# The zip's sha256 as recorded by public dependency locks of this exact file
# (these machines have no network to hash it themselves): a wrong value stops
# the build at `sha256sum -c` below; override both args to pin another build.
ARG LIBTORCH_SHA256=4a7ffb0c0f6c3b02fb14e7790143dfb2fbb2973c41f107357da57bcddd196077
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      build-essential cmake pkg-config ca-certificates curl unzip binutils \
      nlohmann-json3-dev libopencv-dev \
      libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler \
      libabsl-dev libssl-dev libsqlite3-dev \
 && rm -rf /var/lib/apt/lists/*
# The LibTorch zip, checked against LIBTORCH_SHA256 before it is unpacked.
# Static archives are not needed to link against the shared libraries.
RUN if [ -z "${LIBTORCH_SHA256}" ]; then \
      echo "error: the CUDA build needs --build-arg LIBTORCH_SHA256=<sha256 of ${LIBTORCH_URL}>" >&2; \
      echo "       (compute it once: curl -fL '${LIBTORCH_URL}' | sha256sum)" >&2; \
      exit 1; \
    fi \
 && curl -fsSL --retry 3 -o /tmp/libtorch.zip "${LIBTORCH_URL}" \
 && echo "${LIBTORCH_SHA256}  /tmp/libtorch.zip" | sha256sum -c - \
 && unzip -q /tmp/libtorch.zip -d /opt \
 && rm /tmp/libtorch.zip \
 && find /opt/libtorch/lib -name '*.a' -delete \
 && test -f /opt/libtorch/share/cmake/Torch/TorchConfig.cmake
WORKDIR /src
COPY . .
ENV TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST}
RUN cmake -S . -B build -DCMAKE_BUILD_TYPE=Release \
      -DLPDETR_BUILD_TESTS=OFF -DLPDETR_BUILD_SERVER=ON -DLPDETR_WITH_CUDA=ON \
      -DTorch_DIR=/opt/libtorch/share/cmake/Torch \
      -DCMAKE_CUDA_ARCHITECTURES="$(echo "${TORCH_CUDA_ARCH_LIST}" | tr -d '.')" \
      -DCMAKE_INSTALL_RPATH=/opt/libtorch/lib \
 && cmake --build build -j"${JOBS:-$(nproc)}" \
      --target lpdetr-server lpdetr-client lpdetr-model lpdetr-train lpdetr_default_model \
 && cmake --install build --prefix /opt/lpdetr --strip
# The runtime packages: the Ubuntu package owning each library the binaries
# name as NEEDED, outside the LibTorch folder (which is copied as it is).
RUN set -eu; : > /tmp/packages; \
    for bin in /opt/lpdetr/bin/*; do \
      for soname in $(readelf -d "$bin" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do \
        path="$(ldd "$bin" | awk -v so="$soname" '$1 == so && $2 == "=>" {print $3}')"; \
        case "$path" in \
          /opt/libtorch/*) ;; \
          /*) dpkg -S "*/$(basename "$(readlink -f "$path")")" | cut -d: -f1 >> /tmp/packages ;; \
          *) echo "error: $bin needs $soname, not found" >&2; exit 1 ;; \
        esac; \
      done; \
    done; \
    sort -u /tmp/packages > /opt/runtime-packages.txt; \
    echo "runtime packages:"; cat /opt/runtime-packages.txt

# ---------------------------------------------------------------------------
# runtime-gpu: the CUDA base image (cudart; the driver comes from the NVIDIA
# container toolkit), LibTorch's lib folder (it bundles cuBLAS, cuDNN, NCCL
# ...) and the Ubuntu runtime packages listed by build-gpu.
# ---------------------------------------------------------------------------
FROM nvidia/cuda:12.6.3-base-ubuntu24.04 AS runtime-gpu
ARG VERSION=0.1.0
ARG VCS_REF=unknown
ARG BUILD_DATE=unknown
LABEL org.opencontainers.image.title="lpdetr" \
      org.opencontainers.image.description="LP-DETR object detection gRPC service (CUDA 12.6, LibTorch 2.7.1)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.created="${BUILD_DATE}" \
      org.opencontainers.image.base.name="docker.io/nvidia/cuda:12.6.3-base-ubuntu24.04"
COPY --from=build-gpu /opt/runtime-packages.txt /tmp/runtime-packages.txt
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive xargs -r -a /tmp/runtime-packages.txt \
      apt-get install -y -qq --no-install-recommends \
 && rm -rf /var/lib/apt/lists/* /tmp/runtime-packages.txt \
 && groupadd --system --gid 10001 lpdetr \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/lpdetr --no-create-home \
      --shell /usr/sbin/nologin lpdetr \
 && mkdir -p /var/lib/lpdetr/registry /var/lib/lpdetr/datasets \
 && chown -R 10001:10001 /var/lib/lpdetr
COPY --from=build-gpu /opt/libtorch/lib /opt/libtorch/lib
COPY --from=build-gpu /opt/lpdetr/bin /opt/lpdetr/bin
COPY --from=build-gpu /opt/lpdetr/share/lpdetr/models /opt/lpdetr/share/lpdetr/models
# libcuda.so.1 is the host driver's, mounted when the container starts.
RUN missing="$(ldd /opt/lpdetr/bin/* | grep 'not found' | grep -v 'libcuda\.so' || true)"; \
    if [ -n "$missing" ]; then echo "missing runtime libraries:" >&2; echo "$missing" >&2; exit 1; fi
ENV PATH=/opt/lpdetr/bin:$PATH
WORKDIR /var/lib/lpdetr
# 50051: gRPC (Detection, ModelService) and grpc.health.v1 (--grpc_address)
# 9464:  Prometheus /metrics over HTTP (--metrics_address)
# 50052: AdminService, only when an admin token is configured (--admin_address;
#        --admin_token_file or LPDETR_ADMIN_TOKEN); keep it off public networks
EXPOSE 50051 9464 50052
USER 10001:10001
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
  CMD ["/opt/lpdetr/bin/lpdetr-client", "health", "--address", "127.0.0.1:50051", "--timeout", "4"]
ENTRYPOINT ["/opt/lpdetr/bin/lpdetr-server"]
# The server's own defaults for --grpc_address and --metrics_address; the admin
# listener on every interface of the container (it runs only with a token).
# Arguments given to `docker run IMAGE ...` (or Kubernetes `args`) replace these.
CMD ["--grpc_address=0.0.0.0:50051", "--metrics_address=0.0.0.0:9464", "--admin_address=0.0.0.0:50052", \
     "--device=cuda"]

# ---------------------------------------------------------------------------
# The image `docker build` produces without --target: the VARIANT's runtime.
# ---------------------------------------------------------------------------
FROM runtime-${VARIANT} AS final
