#!/bin/sh
# S3 on :9000 with one identity, MINIO_ROOT_USER / MINIO_ROOT_PASSWORD. Takes MinIO's own
# arguments (`server DIR ...`, as docker-compose.yml gives them) and keeps the data in DIR.
set -eu
data=/data
if [ "${1:-}" = server ] && [ -n "${2:-}" ]; then
  data="$2"
fi
cat > /tmp/s3.json <<JSON
{"identities": [{"name": "root",
  "credentials": [{"accessKey": "${MINIO_ROOT_USER}", "secretKey": "${MINIO_ROOT_PASSWORD}"}],
  "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
JSON
exec weed server -dir="$data" -ip=127.0.0.1 -ip.bind=0.0.0.0 \
  -s3 -s3.port=9000 -s3.config=/tmp/s3.json -s3.port.iceberg=0 -s3.port.lance=0 \
  -master.volumeSizeLimitMB=64 -volume.max=0 -metricsPort=0
