"""bin/faults [--quick] [--only KIND ...] [--output PATH]: run the fault ledger, write the report.

Everything the run starts (servers, processes, temp directories) is torn down on the way out,
also on Ctrl-C, SIGTERM or a failure.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path

from tests.faults.harness import kinds, report
from tests.faults.harness.ledger import Harness
from tests.faults.harness.system import ROOT


def _log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)


def _terminate(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bin/faults", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller loads and shorter outages")
    parser.add_argument(
        "--only", nargs="+", metavar="KIND", choices=list(kinds.KINDS), help="run only these: " + ", ".join(kinds.KINDS)
    )
    parser.add_argument("--db-outage", type=float, metavar="SECONDS", help="database outage (default 60, quick 15)")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "reliability.md")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    parser.add_argument("--logs", type=Path, help="keep the processes' logs in this directory")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)

    names = args.only or list(kinds.KINDS)
    rows = []
    setup_notes: list[str] = []
    started = time.monotonic()
    interrupted = False
    try:
        with Harness(quick=args.quick, db_outage_seconds=args.db_outage, keep_logs=args.logs, log=_log) as harness:
            setup_notes = harness.system.notes
            for name in names:
                _log(f"--- {name}")
                row = kinds.run_kind(harness, name)
                rows.append(row)
                _log(
                    f"    {row.fault}: accepted {row.accepted}, lost {row.lost}, duplicated {row.duplicated}"
                    f" (+{row.duplicated_window} in window), oversold {row.oversold}, dead-lettered"
                    f" {row.dead_lettered}, recovery {row.recovery_seconds}s -> {row.verdict}"
                )
    except KeyboardInterrupt:
        interrupted = True
        _log("interrupted: everything the run started was torn down")
        setup_notes = [*setup_notes, "the run was interrupted: later rows were not run"]
    command = (
        "bin/faults" + (" --quick" if args.quick else "") + (f" --only {' '.join(args.only)}" if args.only else "")
    )
    if rows:
        args.output.write_text(
            report.render(
                rows, quick=args.quick, command=command, setup_notes=setup_notes, elapsed=time.monotonic() - started
            )
        )
        _log(f"wrote {args.output}")
    if args.json:
        args.json.write_text(json.dumps([row.as_dict() for row in rows], indent=2))
    print(report.table(rows))
    return 130 if interrupted else (0 if all(row.verdict == "pass" for row in rows) else 1)


if __name__ == "__main__":
    sys.exit(main())
