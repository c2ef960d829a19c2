"""Chaos activities: the pipeline's definitions edited by hand, and probes that they are back as git says."""
