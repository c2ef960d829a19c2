"""Chaos activities: a served model swapped behind the registry, and the golden-set probe."""
