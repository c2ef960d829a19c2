"""``selfheal score`` and ``selfheal dlq list | replay``: batch scoring with @champion, and its dead-letter queue.

One module for both: ``dlq`` holds what ``score`` could not deliver, and replays it the way
``score`` delivers (``flows.batch.delivery``).
"""

from __future__ import annotations

import argparse
from collections import Counter
from typing import TYPE_CHECKING

from flows.cli.command import Commands, Subparsers, config
from flows.cli.lake import open_lake

if TYPE_CHECKING:
    from checkpoints.dlq import DeadLetter

_SCORE = """\
Score a Delta table of the lake, or batch files, with the model registry's @champion,
and write one prediction per row to a Delta table (--output, default `predictions`):
the configured id columns, then _input, _input_version (the table's version, or the
file's sha256), _row (the row's position in that input version), _model_version (the
version that answered), _served_by, _scored_at, _prediction, _score, _dlq_batch.

Each chunk is answered by the model server's fallback chain: @champion, else (when it
fails on the chunk) @previous, else the baseline; _served_by says which (primary,
fallback, baseline).

--input is a table of the lake (NAME: its newest version; NAME@VERSION), else a
parquet or CSV file, or a folder of them (files still being written are left for a
later run). Each row is checked against the model's input contract with the rules the
model server applies to a request; a CSV's cells are read as the literal they spell.

Exactly once per input version: scoring the same table version, or a file with the
same content, again lands nothing. Rows that break the contract, and the rows of a
chunk no model of the chain could answer or whose prediction write fails, go to the dead-letter queue (the
`dlq` table) with the reason and the row's data; the other rows land. See
`selfheal dlq list`, then `selfheal dlq replay` once the cause is fixed.

Runs in this process without Prefect (the selfheal-batch-inference deployment runs the
same code as a flow). Exits 1 when an input cannot be read.

  selfheal score --input silver
  selfheal score --input silver@12 --output silver_scores
  selfheal score --input .selfheal/landing/batch-00003.parquet
"""

_DLQ = """\
The dead-letter queue (the lake's `dlq` table): rows `selfheal score` could not deliver
(refused by the model's input contract, or their chunk's model call or prediction write
failed), each with the reason, its data and its lineage, in batches (the rows of one
chunk that failed together). Append-only: a replay records what became of each row."""

_REPLAY = """\
Re-score the waiting rows of the given batches (default: every batch) with the
@champion of now, and land each row's prediction in the table it was meant for,
exactly once: a replay run twice, or again after a crash, never lands a row twice
(rows an interrupted attempt landed are found in the output and recorded as replayed).
Rows still refused keep waiting, with the new reason. Run it once the cause is fixed:
the table is writable again, the model is repaired, or a champion that takes the rows
is promoted.

  selfheal dlq list
  selfheal dlq replay
  selfheal dlq replay --id 3f2a9c01be77
"""


def register(sub: Subparsers) -> None:
    """Add ``score`` and the ``dlq`` group."""
    score = Commands(sub).add("score", cli_score, "score a table or batch files with @champion into a table", _SCORE)
    score.add_argument(
        "--input",
        "-i",
        required=True,
        metavar="TABLE|PATH",
        help="a table of the lake (NAME or NAME@VERSION), or a parquet/CSV file or folder",
    )
    score.add_argument(
        "--output",
        "-o",
        default="predictions",
        metavar="TABLE",
        help="the Delta table the predictions go to (default: predictions)",
    )
    score.set_defaults(score_parser=score)
    dlq = Commands(sub).group("dlq", "rows batch scoring could not deliver: list and replay them", _DLQ)
    dlq.add("list", cli_list, "what waits in the dead-letter queue: batches, kinds, row counts, reasons")
    replay = dlq.add("replay", cli_replay, "re-score waiting rows and land each exactly once", _REPLAY)
    replay.add_argument(
        "--id", dest="ids", nargs="+", default=[], metavar="ID", help="batch ids from `dlq list` (default: all)"
    )


def cli_score(args: argparse.Namespace) -> int:
    """``selfheal score --input TABLE|PATH [--output TABLE]``."""
    from serving.processes import yield_cpu

    yield_cpu()  # batch work: a model server on the same machine goes first (before the imports below)
    from flows.batch import delivery, inputs
    from flows.batch.champion import load_chain

    cfg = config(check_estimator=False)
    lake = open_lake(cfg)
    try:
        sources = inputs.resolve(lake, args.input)
        delivery.check_output(args.output, sources)
    except ValueError as exc:
        args.score_parser.error(str(exc))  # exits 2
    if not sources:
        print(f"nothing to score: {args.input} holds no parquet or CSV batch file")
        return 0
    model = load_chain(cfg)
    print(f"scoring with {cfg.model_name} v{model.version} (@champion) into {args.output}")
    done: list[delivery.Delivery] = []
    try:
        for source in sources:
            done.append(
                delivery.score_source(
                    lake,
                    model,
                    source,
                    args.output,
                    id_columns=cfg.data.id_columns,
                    settle_seconds=cfg.landing.settle_seconds,
                )
            )
            print(f"  {done[-1].line()}")
    finally:
        model.close()
    landed = sum(d.landed for d in done)
    queued = sum(sum(d.dead_lettered.values()) for d in done)
    print(f"landed {landed} prediction(s) in {args.output}; {queued} row(s) to the dead-letter queue")
    if queued:
        print("  `selfheal dlq list` shows them and why; `selfheal dlq replay` once the cause is fixed")
    return 1 if any(d.unreadable for d in done) else 0


def _batch_lines(batch: str, rows: list[DeadLetter]) -> list[str]:
    """A waiting batch: one line, then its reasons with their row counts (the commonest first)."""
    first = rows[0]
    kinds = "/".join(sorted({r.kind for r in rows}))
    last = max(r.at for r in rows)
    attempts = max(r.attempt for r in rows)
    source = f"{first.input}@{first.input_version[:12]}"
    lines = [f"{batch}  {kinds:<8} {len(rows):>7}  {last:%Y-%m-%d %H:%M:%S}  {attempts:>8}  {source} -> {first.output}"]
    reasons = Counter(r.reason for r in rows)
    for reason, count in reasons.most_common(3):
        lines.append(f"    {count:>7} x {reason}")
    if len(reasons) > 3:
        lines.append(f"    ... and {len(reasons) - 3} other reason(s)")
    return lines


def cli_list(args: argparse.Namespace) -> int:
    """``selfheal dlq list``."""
    from checkpoints.dlq import DeadLetterQueue

    batches = DeadLetterQueue(open_lake()).rows()
    waiting = {batch: [r for r in rows if r.waiting] for batch, rows in batches.items()}
    waiting = {batch: rows for batch, rows in waiting.items() if rows}
    replayed = sum(1 for rows in batches.values() for r in rows if r.status == "replayed")
    if not waiting:
        print(f"nothing waits in the dead-letter queue ({replayed} row(s) replayed so far)")
        return 0
    print(f"{'BATCH':<12}  {'KIND':<8} {'ROWS':>7}  {'LAST EVENT':<19}  {'ATTEMPTS':>8}  INPUT -> OUTPUT")
    for batch, rows in waiting.items():
        print("\n".join(_batch_lines(batch, rows)))
    total = sum(len(rows) for rows in waiting.values())
    print(f"{total} row(s) wait in {len(waiting)} batch(es); {replayed} replayed so far")
    print("`selfheal dlq replay [--id ID ...]` re-scores them once the cause is fixed")
    return 0


def cli_replay(args: argparse.Namespace) -> int:
    """``selfheal dlq replay [--id ID ...]``."""
    from checkpoints.dlq import DeadLetterQueue
    from flows.batch.champion import load_chain
    from flows.batch.delivery import replay

    cfg = config(check_estimator=False)
    lake = open_lake(cfg)
    queue = DeadLetterQueue(lake)
    ids = queue.find(args.ids) if args.ids else list(queue.waiting())  # an unknown id fails before anything loads
    if not ids:
        print("nothing waits in the dead-letter queue")
        return 0
    model = load_chain(cfg)
    print(f"replaying {len(ids)} batch(es) with {cfg.model_name} v{model.version} (@champion)")
    try:
        results = replay(lake, model, ids, id_columns=cfg.data.id_columns)
    finally:
        model.close()
    for result in results:
        print(f"  {result.line()}")
        for reason, count in result.refused.most_common(3):
            print(f"      {count:>7} x {reason}")
    landed = sum(r.landed + r.found for r in results)
    waiting = sum(sum(r.refused.values()) for r in results)
    print(f"{landed} row(s) replayed; {waiting} still wait (`selfheal dlq list`)")
    return 0
