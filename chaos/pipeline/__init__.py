"""Chaos activities: pipeline faults and probes (see actions.py and probes.py)."""
