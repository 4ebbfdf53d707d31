# Worker image: `docker compose up --scale worker=N` (see docker-compose.yml).
FROM python:3.11-slim
WORKDIR /app
# Dependencies first (their layer is cached while only the code changes), from the
# runtime lock, hash-checked: pip, setuptools and wheel too, replacing the base image's.
COPY requirements-runtime.lock ./
RUN pip install --no-cache-dir --require-hashes -r requirements-runtime.lock
COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
COPY agents ./agents
COPY schemas ./schemas
RUN pip install --no-cache-dir --no-deps --no-build-isolation -e . \
    && useradd --uid 10001 --user-group --no-create-home --home-dir /tmp ledger \
    && mkdir /data && chown ledger:ledger /data
USER 10001
ENV PIPELINE_WEB_PORT=6066 PIPELINE_DATA_DIR=/data
EXPOSE 6066
CMD ["python", "-m", "pipeline", "worker"]
