# filekv: the HTTP server, data in the /data volume.
#   docker build -t filekv . && docker run -p 127.0.0.1:8000:8000 -v filekv-data:/data filekv
# (the loopback only, as compose.yaml and the README: the API has no TLS)
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# README.md is the package's long description (pyproject's `readme`), so the build needs it.
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install . \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin filekv \
    && mkdir -p /data \
    && chown filekv:filekv /data \
    && chmod 0700 /data

# The settings the server reads (FILEKV_*): listen on every interface, keep data in the volume.
ENV FILEKV_DATA_DIR=/data \
    FILEKV_HOST=0.0.0.0 \
    FILEKV_PORT=8000

# Declared after the chown so a new volume starts owned by the filekv user.
VOLUME /data
USER filekv
EXPOSE 8000

# No curl in the slim image: the healthcheck is a few lines of Python against /healthz.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('FILEKV_PORT', '8000'); sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=2).status == 200 else 1)"]

# SIGTERM (docker stop) is a graceful shutdown: the store is flushed and closed.
STOPSIGNAL SIGTERM
ENTRYPOINT ["filekv"]
CMD ["serve"]
