"""selfheal's Chaos Toolkit extension: faults, recovery probes and the experiments that use them.

One folder per fault domain, each with ``actions.py`` (faults and their undo) and
``probes.py`` (what the system looks like, and the seconds until it recovered):

=============  ==============================================================
``serving``    kill a worker or the whole server; answers, availability, quality
``network``    a veth into a namespace; throttle (tc tbf/htb), cut, restore
``data``       corrupt a landing batch, inject drift; rows lost
``registry``   promote a bad model, lock the tracking store; champion, store up
``pipeline``   kill a run mid-stage; caught up after the fault
``incidents``  (probes) the healer's incident of a cause RESOLVED
``release``    release a subtly worse model through a canary; rolled back in time
``batch``      the predictions table unwritable while a batch is scored; its rows landed once
=============  ==============================================================

It imports ``checkpoints`` and ``serving`` but never ``flows``: it runs without
Prefect in its process. ``chaos discover --no-install selfheal`` lists every activity.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["ACTIVITY_MODULES", "discover", "load_exported_activities"]

#: Every module whose ``__all__`` lists activities.
ACTIVITY_MODULES = (
    "chaos.serving.actions",
    "chaos.serving.probes",
    "chaos.network.actions",
    "chaos.network.probes",
    "chaos.data.actions",
    "chaos.data.probes",
    "chaos.registry.actions",
    "chaos.registry.probes",
    "chaos.pipeline.actions",
    "chaos.pipeline.probes",
    "chaos.incidents.actions",
    "chaos.incidents.probes",
    "chaos.release.actions",
    "chaos.release.probes",
    "chaos.gitops.actions",
    "chaos.gitops.probes",
    "chaos.golden.actions",
    "chaos.golden.probes",
    "chaos.batch.actions",
    "chaos.batch.probes",
    "chaos.topology.actions",
    "chaos.topology.probes",
)


def load_exported_activities() -> list[dict[str, Any]]:
    """Every action and probe the extension exports, as Chaos Toolkit discovery describes them."""
    # why local: only `chaos discover` needs chaoslib's discovery; every activity imports this package
    from chaoslib.discovery.discover import discover_actions, discover_probes

    activities: list[dict[str, Any]] = []
    for module in ACTIVITY_MODULES:
        found = discover_actions(module) if module.endswith(".actions") else discover_probes(module)
        activities.extend(found)
    return activities


def discover(discover_system: bool = True) -> dict[str, Any]:
    """What ``chaos discover selfheal`` reports: this extension and its activities."""
    from chaoslib.discovery.discover import initialize_discovery_result  # why local: as above

    discovery: dict[str, Any] = initialize_discovery_result("selfheal-chaos", __version__, "selfheal")
    discovery["activities"].extend(load_exported_activities())
    return discovery
