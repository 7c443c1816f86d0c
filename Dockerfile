# One image for every process: the API (default command), the outbox relay, the Celery workers
# and Flower. docker-compose.yml picks the command per service.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN groupadd --system app \
    && useradd --system --gid app --home-dir /app --no-create-home --shell /usr/sbin/nologin app

WORKDIR /app

# Dependencies come from the lock (requirements/runtime.txt, made by bin/lock from pyproject.toml's
# ranges: docs/upgrading.md): every package pinned and hashed, pip refuses anything else. Their own
# layer, rebuilt only when the lock changes.
COPY requirements/runtime.txt ./requirements/
RUN pip install --no-cache-dir --require-hashes -r requirements/runtime.txt

# The project itself, without its dependencies (the lock has them) and built with the lock's
# setuptools; setuptools needs the packages pyproject.toml lists to build. pip check: the lock meets
# pyproject.toml's dependencies.
COPY pyproject.toml ./
COPY marketplace ./marketplace
COPY orders ./orders
COPY notifications ./notifications
COPY segmentation ./segmentation
COPY loyalty ./loyalty
COPY api_tokens ./api_tokens
RUN pip install --no-cache-dir --no-deps --no-build-isolation . && pip check

# The project itself (manage.py); processes run from /app, which comes first on sys.path.
COPY . .

# Static files for the admin and the API docs, served by whitenoise from gunicorn. Development
# settings for this build step only (production's refuse to load without a secret key, which the
# image must not contain); the files are the same. No database or broker is touched.
RUN MARKETPLACE_ENV=development python manage.py collectstatic --noinput

USER app

EXPOSE 8000

CMD ["gunicorn", "marketplace.wsgi", "--bind", "0.0.0.0:8000", "--workers", "2", "--threads", "4", "--timeout", "30", "--access-logfile", "-"]
