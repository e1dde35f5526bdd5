#!/bin/sh
# Create the K2 warehouse bucket on the stack's MinIO (idempotent).
set -eu
mc alias set k2 http://minio:9000 k2 "$MINIO_PASSWORD"
mc mb --ignore-existing k2/k2-warehouse
