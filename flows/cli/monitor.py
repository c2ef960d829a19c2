"""``selfheal monitor``: one monitor pass (or one every S seconds), printing the signals raised."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from flows.cli.command import Commands, Subparsers, config


def register(sub: Subparsers) -> None:
    """Add ``monitor`` (it runs the monitor flow in this process)."""
    mon = Commands(sub, runs_flows=True, flows_on_demand=True).add(
        "monitor",
        cli_monitor,
        "watch predictions, labels, serving and table freshness; print the signals raised",
        "Read everything new since the last run (inference log, feedback, the server's\n"
        "/metrics, table freshness), run the drift, performance, concept-drift and anomaly\n"
        "detectors, append the metric series to the lake's metrics table and print the\n"
        "signals raised. Thresholds come from selfheal.yaml (thresholds:).\n\n"
        "Each pass is a Prefect flow run (selfheal-monitor, with its tasks and a markdown\n"
        "artifact) when PREFECT_API_URL is set or with --prefect; otherwise it runs as plain\n"
        "calls and no Prefect server is started (a one-shot pass takes seconds, not the\n"
        "ephemeral server's start-up). The plain pass imports neither Prefect nor MLflow\n"
        "(the champion is read from the tracking store directly) and leaves\n"
        "trainer.estimator to the pipeline run that trains.\n\n"
        "With --interval, a pass the lake's object store fails (LakeUnreachable) is reported on\n"
        "stderr and the next pass tries again from the same watermark; the exit status is 1\n"
        "when the last pass failed.",
    )
    when = mon.add_mutually_exclusive_group()
    when.add_argument("--once", action="store_true", help="run once and exit (the default)")
    when.add_argument("--interval", type=float, default=None, metavar="S", help="run every S seconds until stopped")
    mon.add_argument("--max-runs", type=int, default=None, help="with --interval: stop after this many runs")
    mon.add_argument("--serving-url", default=None, help="model server to scrape (default: serving.url or host:port)")
    mon.add_argument("--no-serving", action="store_true", help="do not scrape the model server")
    mon.add_argument("--json", action="store_true", help="print the signals as JSON")
    mon.add_argument(
        "--prefect",
        action="store_true",
        help="record each pass as a Prefect flow run even without PREFECT_API_URL "
        "(starts Prefect's temporary local server in this process)",
    )


def cli_monitor(args: argparse.Namespace) -> int:
    """``selfheal monitor --once | --interval S``."""
    # The detectors (pandas, numpy) load when the command runs, not on --help; Prefect only for a flow run.
    from checkpoints.exceptions import LakeUnreachable
    from flows.events import prefect_api_configured
    from flows.monitor.detectors import MonitorThresholds
    from flows.monitor.passes import monitor_pass

    cfg = config(check_estimator=False)  # the monitor never trains: scikit-learn is not imported to check it
    MonitorThresholds.from_mapping(cfg.thresholds)  # fail fast, naming the bad key
    url = None
    if not args.no_serving:
        url = args.serving_url or cfg.serving.url or f"http://{cfg.serving.host}:{cfg.serving.port}"
    params: dict[str, Any] = {
        "lake_root": cfg.lake.root,
        "thresholds": cfg.thresholds,
        "serving_url": url,
        "model_name": cfg.model_name,
        "tracking_uri": cfg.tracking_uri,
        "ml_task": cfg.data.task,
        "target": cfg.data.target,
        "storage_options": cfg.lake.storage_options or None,
    }
    as_flow = args.prefect or prefect_api_configured()
    # The plain pass reads the server URL from the config: give it the one chosen above.
    plain = cfg.model_copy(update={"serving": cfg.serving.model_copy(update={"url": url})})
    if as_flow:
        from flows.monitor.flow import monitor_flow
        from flows.prefect_runs import flow_settings
    runs = 0
    while True:
        started = time.monotonic()
        try:
            if as_flow:
                with flow_settings():
                    signals = monitor_flow(**params)
            else:
                signals = monitor_pass(plain)
        except LakeUnreachable as exc:
            # A pass reads from the watermark the last good one left (in the lake): the next
            # pass after the outage reads what this one could not.
            signals = None
            again = f"; next pass in {args.interval:g} s" if args.interval is not None else ""
            print(f"selfheal monitor: {exc}{again}", file=sys.stderr, flush=True)
        runs += 1
        if signals is not None and args.json:
            print(json.dumps([s.to_dict() for s in signals]))
        elif signals is not None:
            print(f"monitor run: {len(signals)} signal(s)")
            for s in signals:
                print(f"  {s.summary()}")
        if args.interval is None or (args.max_runs is not None and runs >= args.max_runs):
            return 0 if signals is not None else 1
        time.sleep(max(0.0, args.interval - (time.monotonic() - started)))
