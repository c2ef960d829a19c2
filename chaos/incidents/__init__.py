"""Chaos activities: incidents faults and probes (see actions.py and probes.py)."""
