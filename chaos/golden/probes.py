"""Golden-set probes: does the server answer the champion's golden set as it was frozen at promotion?

Independent of the healer: the probe reads the champion from the registry and its set
from the lake (``checkpoints.golden``, written by the pipeline at promotion), POSTs it to
``/predict`` itself and compares with the same rule the healer uses (labels exactly, scores
within the tolerance). Its requests carry the golden-probe request id, so the monitor
leaves them out of the live traffic.
"""

# No ``from __future__ import annotations``: discovery reads these annotations at run time.

import uuid

from chaoslib.types import Configuration

from chaos._polling import Check, seconds_until
from chaos.registry import _store
from checkpoints import Lake
from checkpoints.golden import PROBE_REQUEST_PREFIX, compare, golden_set
from serving.client import ServingClient
from serving.registry import CHAMPION

__all__ = ["seconds_until_golden_set_answered"]


def seconds_until_golden_set_answered(
    url: str,
    tracking_uri: str,
    model_name: str,
    lake_root: str,
    tolerance: float = 1e-6,
    timeout: float = 60.0,
    since: str = "fault",
    interval: float = 1.0,
    configuration: Configuration | None = None,
) -> float:
    """Poll until the server's champion answers its golden set as frozen; return the seconds it took.

    Met only when the champion itself answered (not a fallback) and every label and score
    matches. A champion without a golden set is never met: there is nothing to prove it with.
    """
    registry, lake = _store.registry(tracking_uri, model_name), Lake(lake_root)

    def look() -> Check:
        champion = registry.by_alias(CHAMPION)
        if champion is None:
            return Check(False, f"{model_name} has no @champion")
        rows = golden_set(lake, champion.version, champion.run_id or "")
        if not rows:
            return Check(False, f"v{champion.version} has no golden set")
        with ServingClient(url) as server:
            status, body = server.predict(
                [r.record for r in rows], timeout=5.0, request_id=f"{PROBE_REQUEST_PREFIX}{uuid.uuid4().hex[:16]}"
            )
        answered_by = f"v{body.get('model_version')} ({body.get('served_by')})"
        if status != 200 or body.get("served_by") != "primary" or str(body.get("model_version")) != champion.version:
            return Check(
                False, f"POST /predict answered {status} by {answered_by}, not the champion v{champion.version}"
            )
        differing = compare(rows, body.get("predictions") or [], body.get("scores"), tolerance)
        return Check(not differing, f"{len(differing)} of {len(rows)} golden records of v{champion.version} differ")

    return seconds_until(
        look, f"the champion answers its golden set as frozen at {url}", timeout, since, interval, configuration
    )
