# photoclust worker / producer image (used by docker-compose.yml).
#   docker build -t photoclust .
#   docker run --rm -e KAFKA_BOOTSTRAP_SERVERS=host:9092 photoclust photoclust worker
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NUMBA_CACHE_DIR=/tmp/numba-cache

WORKDIR /app

# project metadata first, so the dependency layer is rebuilt only when it changes
COPY pyproject.toml README.md ./
COPY core ./core
COPY streams ./streams
RUN pip install . \
 && useradd --create-home --uid 1000 photoclust \
 && mkdir -p /data && chown photoclust /data

USER photoclust
# Faust keeps its RocksDB tables / local state here
WORKDIR /data
ENV KAFKA_BOOTSTRAP_SERVERS=kafka:9092

CMD ["photoclust", "worker"]
