# leadflow worker image: `docker build -t leadflow .`, then `docker run leadflow worker`
# (or `topics create`, `rules check`, ...). Used by docker-compose.yml for the topics and worker services.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first, from pyproject.toml alone, so code edits do not reinstall them.
# Every dependency ships a manylinux wheel for CPython 3.11: no compiler is needed.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

COPY streams ./streams
COPY schemas ./schemas
RUN pip install --no-deps . && rm -rf build *.egg-info

# The package does not carry the rules file; LEADFLOW_RULES points here.
COPY rules ./rules

# Faust keeps its per-app data directory in the working directory: give the worker a writable one.
RUN useradd --system --create-home --home-dir /var/lib/leadflow --shell /usr/sbin/nologin leadflow
USER leadflow
WORKDIR /var/lib/leadflow

ENV LEADFLOW_RULES=/app/rules/example.yaml \
    LEADFLOW_WEB_HOST=0.0.0.0 \
    LEADFLOW_WEB_PORT=6066
EXPOSE 6066

ENTRYPOINT ["leadflow"]
CMD ["--help"]
