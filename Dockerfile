# What Matters FHIR service: multi-stage, slim, non-root, gunicorn serving wsgi:app.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
RUN python -m venv /opt/whatmatters \
    && /opt/whatmatters/bin/pip install --no-cache-dir .

FROM python:3.11-slim
# DejaVu Sans renders the patient's words in the PDF summaries sent to document-only partners
RUN apt-get update && apt-get install -y --no-install-recommends fonts-dejavu-core \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --create-home --uid 10001 whatmatters
COPY --from=build /opt/whatmatters /opt/whatmatters
WORKDIR /app
COPY wsgi.py ./
COPY profiles ./profiles
COPY mappings ./mappings
RUN mkdir -p /app/instance && chown whatmatters /app/instance
USER whatmatters
ENV PATH=/opt/whatmatters/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    WHATMATTERS_HOST=0.0.0.0 \
    WHATMATTERS_PROFILES_DIR=/app/profiles \
    WHATMATTERS_MAPPINGS_DIR=/app/mappings
EXPOSE 8080
# /healthz: the process answers (no token needed in either mode); /readyz adds the database
HEALTHCHECK --interval=30s --timeout=5s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4).status == 200 else 1)"
# Migrate once, then start one gunicorn worker per CPU core (each also delivers the outbox).
CMD ["sh", "-c", "whatmatters init-db && exec whatmatters serve --host 0.0.0.0 --port 8080 --workers $(python -c 'import os; print(os.cpu_count() or 2)')"]
