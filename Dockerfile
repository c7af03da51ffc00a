# syntax=docker/dockerfile:1
# The training image: vap with exactly the versions of requirements.lock. It runs the Ray head,
# workers and job submitter of a vap-train RayJob, and MLflow in the vap-platform chart.
#   make image                  → vap-platform:<version>-cpu
#   make image VARIANT=cuda     → vap-platform:<version>-cuda
# cuda: torch as locked (PyPI's CUDA 13 build; CUDA libraries come as wheels, the node needs
#       only the NVIDIA driver).
# cpu:  the same lock with torch/torchvision from PyTorch's CPU wheel index and the CUDA wheels
#       left out (several GB smaller); DeepSpeed's CPU communication op is prebuilt.
FROM python:3.11.14-slim-bookworm AS build
ARG VARIANT=cpu
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/vap/bin:$PATH
# a compiler for deepspeed's sdist and its prebuilt op
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/vap && pip install "pip==26.3" "setuptools==84.2.1" wheel
COPY requirements.lock /tmp/requirements.lock
RUN set -eu; \
    case "$VARIANT" in \
      cuda) grep -v '^deepspeed==' /tmp/requirements.lock > /tmp/lock.txt ;; \
      cpu)  grep -vE '^(deepspeed|triton)==|^(nvidia|cuda)-' /tmp/requirements.lock > /tmp/lock.txt; \
            torch=$(sed -n 's/^torch==//p' /tmp/lock.txt); vision=$(sed -n 's/^torchvision==//p' /tmp/lock.txt); \
            pip install --index-url "$TORCH_CPU_INDEX" "torch==${torch}+cpu" "torchvision==${vision}+cpu" ;; \
      *) echo "VARIANT must be cpu or cuda, got '$VARIANT'" >&2; exit 1 ;; \
    esac; \
    pip install -r /tmp/lock.txt
# deepspeed last, with its CPU op compiled in for the cpu variant (no JIT build at run time)
RUN set -eu; ds=$(grep '^deepspeed==' /tmp/requirements.lock); \
    if [ "$VARIANT" = cpu ]; then \
      DS_ACCELERATOR=cpu DS_BUILD_SHM_COMM=1 pip install --no-build-isolation --no-deps "$ds"; \
    else \
      pip install --no-build-isolation --no-deps "$ds"; \
    fi
COPY pyproject.toml README.md /src/
COPY platform /src/platform
COPY training /src/training
COPY datasets /src/datasets
COPY operators /src/operators
RUN pip install --no-deps --no-build-isolation /src && pip check
# helm + kubectl (pinned, sha256-checked) and the charts: vap.kube renders and submits RayJobs
# from inside the cluster too (the scheduled-retraining operator runs this image)
COPY tools/install-k8s-tools.sh /src/tools/
RUN SKIP_CHECKOV=1 bash /src/tools/install-k8s-tools.sh /opt/vap
COPY charts /opt/vap/share/vap-charts

FROM python:3.11.14-slim-bookworm
LABEL org.opencontainers.image.title="vap-platform" \
      org.opencontainers.image.description="Video-As-Prompt training (Ray Train + DeepSpeed), MLflow" \
      org.opencontainers.image.licenses="Apache-2.0"
# bash runs KubeRay's `ray start` wrapper; wget its health probes
RUN apt-get update \
 && apt-get install -y --no-install-recommends wget \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 vap \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin vap
COPY --from=build /opt/vap /opt/vap
# The image has no .git: the commit it was built from is stamped here (make image passes it) and
# every model version registered from it records it as code_version.
ARG VAP_CODE_VERSION=unknown
LABEL org.opencontainers.image.revision=$VAP_CODE_VERSION
# The pods' root filesystem is read-only: everything writable lives under /tmp (an emptyDir).
ENV PATH=/opt/vap/bin:$PATH \
    HOME=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    HF_HOME=/tmp/.cache/huggingface \
    TORCH_EXTENSIONS_DIR=/tmp/.cache/torch_extensions \
    VAP_CHARTS_DIR=/opt/vap/share/vap-charts \
    VAP_CODE_VERSION=$VAP_CODE_VERSION \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
WORKDIR /tmp
# Ray and MLflow are probed by Kubernetes (KubeRay's and the chart's probes), not by Docker.
HEALTHCHECK NONE
CMD ["vap", "--help"]
