# The translator service image: `python -m service` on ONNX Runtime (CUDA 13 / cuDNN 9 or CPU).
#
#   # models/default, the bundle, ships with the repository (`make model` rebuilds it)
#   docker build -t REGISTRY/translator:TAG .
#   docker run --rm -p 50051:50051 -p 9464:9464 REGISTRY/translator:TAG            # CPU
#   docker run --rm --gpus all -e TRANSLATOR_DEVICE=cuda -p 50051:50051 REGISTRY/translator:TAG
#   # several models, new versions picked up while it runs (see deploy/README.md):
#   docker run --rm -v "$PWD/repository:/models:ro" -e TRANSLATOR_MODEL_REPOSITORY=/models \
#       -p 50051:50051 REGISTRY/translator:TAG
#
# Two stages on the same base, so the virtual environment built in the first runs in the second:
# - builder: the runtime set is pyproject.toml's `project.dependencies` (the single source of
#   truth, also what `make serve` installs), read by scripts/runtime_requirements.py with its pins,
#   installed into /opt/venv; the gRPC stubs are generated with grpcio-tools (from the `stubs`
#   extra), which stays in this stage.
# - runtime: /opt/venv + service/ + the bundle. No torch, no compilers, no package manager use,
#   a non-root numeric user, exec-form entrypoint so SIGTERM reaches Python (the service drains).
#
# CUDA and cuDNN come as pip wheels through onnxruntime-gpu's `[cuda,cudnn]` extras rather than
# from an nvidia/cuda base image: the wheels are exactly the CUDA 13 / cuDNN 9 builds that
# onnxruntime-gpu 1.31 was built against, the image keeps the Python 3.11 of development and CI
# (the CUDA 13 Ubuntu 24.04 bases ship 3.12), and the host needs only the NVIDIA driver (R580+)
# and the container toolkit / device plugin. The same image runs on CPU-only nodes (CPU provider).
# Build with `--build-arg ORT_EXTRAS=` for a CPU-only image without the ~3 GB of CUDA wheels.
#
# The model bundle is copied from the build context: models/default (fp32 ONNX + tokenizer +
# manifest) is committed to the repository, next to the checkpoint it was exported from
# (checkpoints/default). `make model` rebuilds both from scratch (training, then export); `make
# bundle` re-exports the bundle from the shipped checkpoint. Nothing is trained in a builder stage:
# training needs torch and ~10 CPU-minutes, and an image build should package an artefact that
# has been evaluated, not produce a new one. The image serves that bundle on its own
# (TRANSLATOR_BUNDLE_PATH, below); other models are served from a model repository mounted into
# the container (TRANSLATOR_MODEL_REPOSITORY, set by the Kubernetes manifests rather than here, so
# that the image still runs without a volume). The Kubernetes deployment seeds an empty repository
# with this bundle as default/1 (deploy/README.md).
# Pin the base by digest in your registry mirror for reproducible builds.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ARG ORT_EXTRAS=cuda,cudnn
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml ./
COPY scripts/runtime_requirements.py scripts/
# project.dependencies at their exact pins (no torch: training is the `train` extra) into
# /opt/venv; grpcio-tools, for the stubs only, into a throwaway venv.
RUN python scripts/runtime_requirements.py --ort-extras "${ORT_EXTRAS}" > runtime.txt \
    && python scripts/runtime_requirements.py --build > build.txt \
    && python -m venv /opt/venv \
    && /opt/venv/bin/pip install -r runtime.txt \
    && python -m venv /opt/buildtools \
    && /opt/buildtools/bin/pip install -r build.txt
COPY protos/ protos/
COPY service/ service/
# The same protoc invocation as `make proto`: stubs land in service/pb/ as the package service.pb.
RUN rm -rf service/pb \
    && mkdir -p service/pb/translator/v1 service/pb/inference \
    && /opt/buildtools/bin/python -m grpc_tools.protoc -Iservice/pb=protos \
        --python_out=. --grpc_python_out=. protos/translator/v1/translator.proto \
        protos/inference/grpc_predict_v2.proto \
    && touch service/pb/__init__.py service/pb/translator/__init__.py \
        service/pb/translator/v1/__init__.py service/pb/inference/__init__.py \
    && /opt/venv/bin/python -m compileall -q service

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="translator" \
      org.opencontainers.image.description="Transformer translation service (gRPC, ONNX Runtime)"
RUN groupadd --gid 10001 translator \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin translator
COPY --from=builder /opt/venv /opt/venv
WORKDIR /opt/translator
COPY --from=builder /src/service/ service/
COPY models/default/ models/default/
# Bytecode is compiled at build time and never written at runtime (read-only root filesystem).
# The CUDA 13 and cuDNN wheels put their libraries under site-packages/nvidia/, which ONNX
# Runtime's CUDA provider library (no RUNPATH) does not search: LD_LIBRARY_PATH points there
# (directories that a CPU-only build lacks are ignored). libcuda.so.1 comes from the host driver.
ENV PATH=/opt/venv/bin:$PATH \
    LD_LIBRARY_PATH=/opt/venv/lib/python3.11/site-packages/nvidia/cu13/lib:/opt/venv/lib/python3.11/site-packages/nvidia/cudnn/lib \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TRANSLATOR_BUNDLE_PATH=/opt/translator/models/default \
    TRANSLATOR_PORT=50051 \
    TRANSLATOR_METRICS_PORT=9464 \
    TRANSLATOR_REFLECTION=false
USER 10001:10001
EXPOSE 50051 9464
# Python is PID 1 and installs its own SIGTERM handler (drain, then exit 0) and SIGHUP handler
# (rescan the model repository now); the service starts no child processes, so no init process
# is needed to forward signals or reap zombies.
ENTRYPOINT ["python", "-m", "service"]
