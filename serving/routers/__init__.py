"""HTTP routes, one module per resource: predictions, feedback, probes, admin."""
