"""Chaos activities: network faults and probes (see actions.py and probes.py)."""
