"""Chaos activities: serving faults and probes (see actions.py and probes.py)."""
