"""The model server: FastAPI under gunicorn, with breaker, fallback, hot reload and an inference log.

Importing this package is cheap (no MLflow, no Prefect): ``python -m serving``
runs the server; ``serving.app.create_app`` builds the ASGI app.
"""
