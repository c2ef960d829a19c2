"""The service levels of ``selfheal.yaml`` (``slas:``), read for an experiment's configuration.

Experiments state their SLA in the steady-state hypothesis from these values, loaded
as Chaos Toolkit *dynamic configuration* (a probe run before the experiment)::

    configuration:
      mttr_seconds:
        type: probe
        name: mttr-sla
        provider: {type: python, module: chaos.sla, func: mttr_seconds,
                   arguments: {config_path: "${sandbox}/selfheal.yaml", names: [serving-kill-worker, serving_down]}}

The chaos extension does not import ``flows`` (its config loader), so the file is
read here with the same precedence for these keys: ``SELFHEAL_SLAS__AVAILABILITY``,
``SELFHEAL_SLAS__ROWS_LOST``, ``SELFHEAL_SLAS__HEALING_OFF_MTTR_SECONDS`` and
``SELFHEAL_SLAS__MTTR_SECONDS`` (a JSON object) override the file, whose values
override the defaults below (the same as ``flows.config.SLAConfig``'s; ``tests/chaos``
checks they agree).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "availability",
    "availability_tolerance",
    "mttr_seconds",
    "mttr_tolerance",
    "quality_minimum",
    "rows_lost",
    "rows_lost_tolerance",
    "service_levels",
]

DEFAULT_AVAILABILITY = 0.99
DEFAULT_ROWS_LOST = 0
#: MTTR bounds by experiment or cause when the config names none (``flows.config`` uses
#: these too). A drift repair is a retrain, not a restart; the experiments whose recovery
#: is "a complete pipeline run after the fault" wait for a whole run with training too
#: (65-75 s in the sandbox on 2 cores).
DEFAULT_MTTR_SECONDS: dict[str, float] = {
    "default": 60.0,
    "data_drift": 120.0,
    "concept_drift": 120.0,
    "pipeline-kill-mid-stage": 120.0,
    "data-nested-column": 120.0,
    "data-partial-write": 120.0,
    "data-resent-rows": 120.0,
    "data-non-file-entry": 120.0,
    "lake-torn-commit": 120.0,
    # The killed worker's run is Crashed after 2 missed heartbeats (60 s), then the other worker runs it all.
    "topology-worker-kill": 120.0,
    "config_drift": 10.0,  # gitops.interval_seconds 5 in the sandbox (Argo CD's default sync interval is 3 min)
    # A batch's dead letters wait out healing.dlq_grace_seconds (15 s) before the replay (26 s measured).
    "output_delivery": 60.0,
}
DEFAULT_HEALING_OFF_MTTR_SECONDS = 30.0


def service_levels(config_path: str | None = None) -> dict[str, Any]:
    """``slas`` of the config file merged over the defaults, with the environment's overrides on top."""
    slas: dict[str, Any] = {}
    file = Path(config_path or os.environ.get("SELFHEAL_CONFIG", "selfheal.yaml"))
    if file.exists():
        loaded = yaml.safe_load(file.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{file}: expected a mapping at the top level")
        slas = dict(loaded.get("slas") or {})
    mttr = {**DEFAULT_MTTR_SECONDS, **{str(k): float(v) for k, v in (slas.get("mttr_seconds") or {}).items()}}
    out: dict[str, Any] = {
        "availability": float(slas.get("availability", DEFAULT_AVAILABILITY)),
        "rows_lost": int(slas.get("rows_lost", DEFAULT_ROWS_LOST)),
        "mttr_seconds": mttr,
        "healing_off_mttr_seconds": float(slas.get("healing_off_mttr_seconds", DEFAULT_HEALING_OFF_MTTR_SECONDS)),
    }
    if "SELFHEAL_SLAS__AVAILABILITY" in os.environ:
        out["availability"] = float(os.environ["SELFHEAL_SLAS__AVAILABILITY"])
    if "SELFHEAL_SLAS__ROWS_LOST" in os.environ:
        out["rows_lost"] = int(os.environ["SELFHEAL_SLAS__ROWS_LOST"])
    if "SELFHEAL_SLAS__HEALING_OFF_MTTR_SECONDS" in os.environ:
        out["healing_off_mttr_seconds"] = float(os.environ["SELFHEAL_SLAS__HEALING_OFF_MTTR_SECONDS"])
    if "SELFHEAL_SLAS__MTTR_SECONDS" in os.environ:
        out["mttr_seconds"] = {**mttr, **json.loads(os.environ["SELFHEAL_SLAS__MTTR_SECONDS"])}
    if not 0.0 <= out["availability"] <= 1.0:
        raise ValueError(f"slas.availability must be in [0, 1], got {out['availability']}")
    return out


def mttr_seconds(config_path: str | None = None, names: list[str] | None = None) -> float:
    """The MTTR bound for the first of ``names`` listed under ``slas.mttr_seconds`` (else its ``default``)."""
    table = service_levels(config_path)["mttr_seconds"]
    for name in names or []:
        if name in table:
            return float(table[name])
    return float(table["default"])


def mttr_tolerance(config_path: str | None = None, names: list[str] | None = None) -> list[float]:
    """``[0, mttr]``: a range tolerance for a probe that returns seconds to recover."""
    return [0.0, mttr_seconds(config_path, names)]


def availability(config_path: str | None = None) -> float:
    """The availability a service must keep (share of requests answered)."""
    return float(service_levels(config_path)["availability"])


def availability_tolerance(config_path: str | None = None) -> list[float]:
    """``[availability, 1]``: a range tolerance for a probe that returns a share of requests answered."""
    return [availability(config_path), 1.0]


def rows_lost(config_path: str | None = None) -> int:
    """How many rows a fault may lose (0)."""
    return int(service_levels(config_path)["rows_lost"])


def rows_lost_tolerance(config_path: str | None = None) -> list[int]:
    """``[0, rows_lost]``: a range tolerance for a probe that counts lost rows."""
    return [0, rows_lost(config_path)]


def quality_minimum(config_path: str | None = None) -> float:
    """The served model's quality floor: ``gate.minimum`` (no model below it is ever promoted; 0 when unset)."""
    file = Path(config_path or os.environ.get("SELFHEAL_CONFIG", "selfheal.yaml"))
    loaded = (yaml.safe_load(file.read_text()) or {}) if file.exists() else {}
    gate = loaded.get("gate") or {} if isinstance(loaded, dict) else {}
    return float(os.environ.get("SELFHEAL_GATE__MINIMUM", gate.get("minimum", 0.0)))
