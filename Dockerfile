# The service image. Runtime dependencies only, pinned by requirements.lock (used as constraints).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

COPY requirements.lock pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-cache-dir -c requirements.lock . \
    && useradd --create-home --uid 10001 wallet

USER wallet
EXPOSE 8000
# Railway and most platforms inject PORT. WALLET_DATABASE_URL must point at PostgreSQL.
CMD ["sh", "-c", "wallet migrate && wallet seed ${WALLET_SEED_MODE:---reference-only} && exec wallet serve --host 0.0.0.0 --port ${PORT:-8000} --workers ${WALLET_WORKERS:-2}"]
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
    CMD python -c "import urllib.request,os; urllib.request.urlopen(f'http://127.0.0.1:{os.environ.get(\"PORT\",\"8000\")}/health', timeout=2)"
