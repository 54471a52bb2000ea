# The operator image. Wheels are built on the host first (`make image` does it: `make wheels`, the
# locked dependencies with their hashes checked), so the build itself needs no network and works
# where no registry is reachable; the install checks the hashes again against requirements.lock.
#   docker build --build-arg BASE_IMAGE=python:3.11-slim -t apiservice-operator:0.1.0 .
# BASE_IMAGE must carry CPython 3.11 on glibc >= 2.34 (the host-built cp311 manylinux wheels).
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
COPY build/wheels /wheels
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --no-index --find-links /wheels --require-hashes \
      -r /wheels/requirements.lock \
 && /opt/venv/bin/pip install --no-cache-dir --no-index --find-links /wheels --no-deps apiservice-operator \
 && find /opt/venv -name '__pycache__' -prune -exec rm -rf {} +

FROM ${BASE_IMAGE}
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:/usr/local/bin:/usr/bin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# a numeric, non-root user: runAsNonRoot can verify it without a passwd entry
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["apiservice-operator"]
CMD ["run"]
