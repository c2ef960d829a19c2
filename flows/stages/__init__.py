"""Pipeline stages: plain functions, data in and data out; ``flows.pipeline`` wraps them as tasks."""
