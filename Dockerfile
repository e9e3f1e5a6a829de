# One image for both sides of a federation: `fgssl serve` (coordinator) and `fgssl node` (hospital).
# Certificates and keys are never baked in: mount them at run time (see docker-compose.yml and README).
FROM python:3.11-slim

WORKDIR /app
COPY . /app
# Editable install: `fgssl serve` hands this source folder (pyproject.toml's [tool.flwr.app]) to `flwr run`.
RUN pip install --no-cache-dir -e . \
    && useradd --create-home --uid 10001 fgssl \
    && mkdir -p /runs /state && chown fgssl /runs /state

ENV FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 \
    FLWR_TELEMETRY_ENABLED=0 \
    PYTHONUNBUFFERED=1
USER fgssl
ENTRYPOINT ["fgssl"]
CMD ["--help"]
