"""Release faults: a subtly worse model promoted through a canary; the analysis rolls it back."""
