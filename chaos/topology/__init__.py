"""Chaos activities: faults of the production topology (see actions.py)."""
