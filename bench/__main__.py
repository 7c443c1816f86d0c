"""``python -m bench [--quick] [--recorder]``: run every scenario side by side, write the report.

The full run writes docs/benchmarks.md and docs/benchmarks-latency.png; --quick (under two
minutes, smaller loads and windows) writes bench/results/quick.md unless --output says otherwise.
Raw numbers go to bench/results/latest.json or quick.json (next to --output when given);
``--from-json FILE`` re-renders a report from them. --recorder runs only the dead-letter recorder
against its plain consumer and replaces only its section of the report, in place (raw numbers:
bench/results/recorder.json or quick-recorder.json).
"""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import sys
from pathlib import Path

from bench import report
from bench.config import FULL, QUICK, ROOT, Target
from bench.run import SCENARIOS, run


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="under two minutes; writes bench/results/quick.md")
    parser.add_argument("--output", type=Path, help="the Markdown report (the PNG goes next to it)")
    parser.add_argument(
        "--recorder", action="store_true", help="only the dead-letter recorder; replaces its section of the report"
    )
    parser.add_argument("--only", nargs="+", choices=list(SCENARIOS), help="run only these scenarios")
    parser.add_argument("--python-load", action="store_true", help="use the Python load generator even if wrk exists")
    parser.add_argument("--from-json", type=Path, help="only re-render the report from a run's raw JSON")
    args = parser.parse_args(argv)
    if args.from_json:
        output = args.output or ROOT / "docs" / "benchmarks.md"
        write = report.write_section if args.recorder else report.write
        write(json.loads(args.from_json.read_text()), output)
        print(f"wrote {output}")
        return 0
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)

    params = QUICK if args.quick else FULL
    output = args.output or (ROOT / ("bench/results/quick.md" if args.quick else "docs/benchmarks.md"))
    target = Target()
    only = ["recorder"] if args.recorder else args.only
    results = run(target, params, only=only, use_wrk=False if args.python_load else None)
    results["command"] = (".venv/bin/python -m bench " + shlex.join(sys.argv[1:] if argv is None else argv)).strip()
    name = (
        ("quick" if args.quick else "latest") if not args.recorder else ("quick-recorder" if args.quick else "recorder")
    )
    raw = ROOT / "bench" / "results" / f"{name}.json"
    if args.output:
        raw = args.output.with_name(args.output.stem + ("-recorder" if args.recorder else "") + ".json")
    raw.parent.mkdir(parents=True, exist_ok=True)
    raw.write_text(json.dumps(results, indent=1, default=str))
    (report.write_section if args.recorder else report.write)(results, output)
    print(f"wrote {output} and {raw}")
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
