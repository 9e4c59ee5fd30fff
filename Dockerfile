# The gRPC server. Envoy runs beside it from the official image with envoy/envoy.yaml
# (see docs/architecture.md); PostgreSQL is yours (DATABASE_URL).
FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY server ./server
# The server's generated stubs come from the client package (embedd-client), installed with it.
COPY clients/python ./clients/python
RUN pip install --no-cache-dir ./clients/python .
USER nobody
EXPOSE 50051
# Required: DATABASE_URL (control plane) and EMBEDD_SECRET_KEY (base64, 32 bytes).
ENTRYPOINT ["embedd-server"]
CMD ["serve"]
