"""Batch scoring faults: the predictions table unwritable for a bounded outage while ``selfheal score`` runs."""
