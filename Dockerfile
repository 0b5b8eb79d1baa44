# The service image: runtime dependencies only, pinned by requirements.lock (used as constraints).
# No embedded PostgreSQL (the `embedded` extra), no test tools: WALLET_DATABASE_URL must point at
# PostgreSQL. Built and checked by `make image-test` (tools/image_test.sh).

# Stage 1: install the package into a virtual environment (then drop the installers from it); the
# sources and the build tree stay here.
FROM python:3.11-slim AS build
ENV PYTHONDONTWRITEBYTECODE=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /build
COPY requirements.lock pyproject.toml README.md ./
COPY src ./src
RUN python -m venv /opt/wallet \
    && /opt/wallet/bin/pip install --no-cache-dir -c requirements.lock . \
    && /opt/wallet/bin/pip uninstall --yes --quiet pip setuptools

# Stage 2: the runtime, with the environment alone.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PATH=/opt/wallet/bin:$PATH
COPY --from=build /opt/wallet /opt/wallet
RUN useradd --create-home --uid 10001 wallet
WORKDIR /home/wallet
USER wallet
EXPOSE 8000
# Railway and most platforms inject PORT. WALLET_DATABASE_URL must point at PostgreSQL; the
# container waits for it to accept connections (WALLET_DB_STARTUP_WAIT_MS), and any number of
# containers may start at once: migrations take turns under an advisory lock.
CMD ["sh", "-c", "wallet migrate && wallet seed ${WALLET_SEED_MODE:---reference-only} && exec wallet serve --host ${WALLET_HOST:-0.0.0.0} --port ${PORT:-8000} --workers ${WALLET_WORKERS:-2}"]
# Migrating a large ledger and starting the workers takes a while: failures in the first 60 s
# do not count against the retries.
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD python -c "import urllib.request,os; urllib.request.urlopen(f'http://127.0.0.1:{os.environ.get(\"PORT\",\"8000\")}/health', timeout=2)"
