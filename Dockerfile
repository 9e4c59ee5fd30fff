# The gRPC server. Envoy runs beside it from the official image with envoy/envoy.yaml
# (see docs/architecture.md); PostgreSQL is yours (DATABASE_URL).
FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY server ./server
COPY clients ./clients
RUN pip install --no-cache-dir .
USER nobody
EXPOSE 50051
# Required: DATABASE_URL (control plane) and EMBEDD_SECRET_KEY (base64, 32 bytes).
ENTRYPOINT ["embedd-server"]
CMD ["serve"]
