# syntax=docker/dockerfile:1
# One image for referral, scheduling and notify; the Kubernetes command picks the service
# (python -m services.<name> serve | migrate).
#
# Both stages use the same base so the virtualenv's interpreter links stay valid.
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src

# Runtime dependencies only, read from pyproject.toml so this layer is rebuilt only when
# they change; the [dev] extra never enters /opt/venv.
COPY pyproject.toml ./
RUN python -m venv /opt/venv \
 && python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
 && /opt/venv/bin/pip install --require-virtualenv -r /tmp/requirements.txt

# The code generator lives outside /opt/venv, so it stays in this stage.
RUN pip install grpcio-tools==1.81.1
COPY proto ./proto
RUN mkdir gen \
 && python -m grpc_tools.protoc -I proto \
      -I "$(python -c 'import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))')" \
      --python_out=gen --grpc_python_out=gen $(find proto -name '*.proto')

FROM ${PYTHON_IMAGE} AS runtime
# A fixed numeric id: Kubernetes' runAsNonRoot can verify a number, not a name.
RUN groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin app
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app/gen:/app \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /app
COPY --from=build /opt/venv /opt/venv
COPY --from=build /src/gen /app/gen
COPY services /app/services
# The root filesystem is read-only at run time, so compile now rather than on first import.
RUN python -m compileall -q /app
USER 10001:10001
EXPOSE 50051 50052 50053 9091 9092 9093 8080
CMD ["python", "-m", "services.referral", "serve"]
