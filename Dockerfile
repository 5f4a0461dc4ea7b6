# The Pitstop worker image, for docker-compose.yml (real Kafka and Postgres).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY schemas schemas
COPY feedback feedback
COPY streams streams
COPY retrain_worker retrain_worker
COPY pitstop pitstop
RUN pip install --no-cache-dir . && useradd --system pitstop && mkdir /state && chown pitstop /state
USER pitstop
ENV PITSTOP_STATE_DIR=/state
CMD ["python", "-m", "streams", "worker"]
