"""GitOps for the pipeline's definitions: live Prefect deployments and the champion alias kept as git says.

``desired`` reads the desired state from a git commit; ``reconcile`` compares it with the
live Prefect server and registry, applies changes made in git and reverts drift made by
hand as ``config_drift`` incidents. ``selfheal gitops diff|sync|watch`` runs it.
"""
