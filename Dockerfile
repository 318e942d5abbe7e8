# What Matters FHIR service: multi-stage, slim, non-root, gunicorn serving wsgi:app.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
RUN python -m venv /opt/whatmatters \
    && /opt/whatmatters/bin/pip install --no-cache-dir .

FROM python:3.11-slim
RUN useradd --system --create-home --uid 10001 whatmatters
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
    WHATMATTERS_PROFILES_DIR=/app/profiles
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/fhir/metadata', timeout=4).status == 200 else 1)"
# Migrate once, then start one gunicorn worker per CPU core.
CMD ["sh", "-c", "whatmatters init-db && exec gunicorn wsgi:app --bind 0.0.0.0:8080 --worker-class gthread --threads 4 --workers $(python -c 'import os; print(os.cpu_count() or 2)') --graceful-timeout 20"]
