"""Chaos activities: data faults and probes (see actions.py and probes.py)."""
