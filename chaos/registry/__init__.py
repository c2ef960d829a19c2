"""Chaos activities: registry faults and probes (see actions.py and probes.py)."""
