"""Pipeline stages: plain functions, data in and data out; ``flows.pipeline.flow`` wraps them as tasks."""
