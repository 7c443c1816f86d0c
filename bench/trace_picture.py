"""``python -m bench.trace_picture [--from-json FILE]``: docs/img/order-trace.png, one order's trace.

The Procfile's web, relay and one worker per subscriber run on a database and a vhost of their own
(production settings, bench/config.py) with tracing on, exporting OTLP/HTTP to the tests' receiver
(tests/support/otlp.py) in this process, as docs/observability.md configures them for Jaeger. The
seller's webhook is a local stub answering 200 (bench/stub.py), a buyer's first order makes them
high value (customer.segment_changed, so loyalty_rewards has work), and the web's own broker is
unreachable, so its on-commit publish fails and the relay publishes the event from the outbox, as
in tests/observability/test_tracing.py: the relay is in the trace, next to the failed publish.

One order warms every process up (connections, imports); the next, by another buyer, is the one
pictured: its spans, as Jaeger would be sent them, drawn the way Jaeger's timeline draws a trace
(a row per span, indented under its parent, a bar from its start for its duration, a colour per
service) in a page of our own, which headless Chromium screenshots. A run of a span's SQL
statements (the psycopg instrumentation's) is folded into one row, with a tick per statement, and
a long stretch in which no span runs (the event waiting for the relay's next poll) is drawn as a
narrow hatched band that says how long it was. The spans and the page are kept in the log
directory; ``--from-json`` draws the picture again from the spans without a run.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import html
import json
import os
import shutil
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import httpx

from bench import broker, data
from bench.config import PYTHON, ROOT, TINY, Target
from bench.load import Workload
from bench.processes import Stack, log, procfile_argv, wait_http
from marketplace.events import topology
from marketplace.tracing import trace_id_of
from tests.faults.harness.servers import free_port
from tests.support.otlp import Link, OtlpReceiver, Span

TARGET = Target.named("trace_picture", 8130)
PICTURE = ROOT / "docs" / "img" / "order-trace.png"
SPANS = TARGET.logdir / "spans.json"
PAGE = TARGET.logdir / "order-trace.html"
WIDTH_PX = 1400
EXPORT_EVERY_MS = "100"  # OTEL_BSP_SCHEDULE_DELAY: spans reach the receiver within a tenth of a second
QUIET_SECONDS = 2.0  # a trace is taken as whole once it has gained no span for this long
PROCESSES = ("web", "relay", *(subscriber.name for subscriber in topology.SUBSCRIBERS))
# (service, span name): what the pictured trace must hold.
EXPECTED = (
    ("marketplace-web", "POST api/orders/"),
    ("marketplace-relay", "publish marketplace.events"),
    *((f"marketplace-{s.name}", f"process marketplace.{s.name}") for s in topology.SUBSCRIBERS),
    ("marketplace-seller_notification", "POST"),  # the webhook call
    ("marketplace-order_confirmation", "send email"),
    ("marketplace-customer_segmentation", "publish marketplace.events"),  # customer.segment_changed
    ("marketplace-loyalty_rewards", "send email"),
)
# A stretch of the trace with no span running, longer than this share of it, is cut to a band
# this many percent of the lane wide (Timeline).
CUT_SHARE = 0.25
CUT_PERCENT = 8.0
# Jaeger's own palette, a colour per process in the order an order passes through them.
COLOURS = dict(
    zip(
        (f"marketplace-{name}" for name in PROCESSES),
        ("#17b8be", "#f89570", "#829ae3", "#e79fd5", "#4dc19c", "#ddb27c"),
        strict=True,
    )
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.trace_picture", description=__doc__.splitlines()[0])
    parser.add_argument("--from-json", type=Path, help=f"draw the spans a run kept ({SPANS}) instead of running")
    args = parser.parse_args(argv)
    if args.from_json:
        spans = [_span(fields) for fields in json.loads(args.from_json.read_text())]
    else:
        spans = traced_order()
        SPANS.write_text(json.dumps([dataclasses.asdict(span) for span in spans], indent=1) + "\n")
        log(f"{len(spans)} spans kept in {SPANS}")
    PAGE.parent.mkdir(parents=True, exist_ok=True)
    PAGE.write_text(page(spans))
    PICTURE.parent.mkdir(parents=True, exist_ok=True)
    screenshot(PAGE, PICTURE)
    log(f"wrote {PICTURE.relative_to(ROOT)} ({PICTURE.stat().st_size // 1024} KiB) from {PAGE}")
    return 0


def _span(fields: dict) -> Span:
    return Span(
        **fields
        | {
            "links": tuple(Link(**link) for link in fields["links"]),
            "exception_types": tuple(fields["exception_types"]),
        }
    )


# --- the run -----------------------------------------------------------------------------------


def traced_order() -> list[Span]:
    log(f"database {TARGET.db_name}, vhost {TARGET.vhost}: created afresh, migrated and seeded")
    data.drop_database(TARGET)  # every buyer's next order is their first: it changes their segment
    broker.delete_vhost(TARGET)
    broker.create_vhost(TARGET)
    workload = data.prepare(TARGET, replace(TINY, products=1, buyers=2, lines_per_order=1))
    data.set_seller_webhooks(TARGET, f"http://127.0.0.1:{TARGET.stub_port}/webhook")
    receiver = OtlpReceiver()
    os.environ.update(  # Target.env() hands os.environ to every process it starts
        OTEL_SDK_DISABLED="false",
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
        OTEL_BSP_SCHEDULE_DELAY=EXPORT_EVERY_MS,
        SEGMENT_HIGH_VALUE_SPEND="1.00",  # any first order makes its buyer high value
    )
    stack = Stack(TARGET)
    try:
        stub = stack.start("stub", [PYTHON, "-m", "bench.stub", "--port", str(TARGET.stub_port)])
        # Nothing listens on the web's broker port: its on-commit publish fails, the relay's succeeds.
        # No cooldown after a failure, so that the pictured order's publish is tried (and fails) too.
        web_env = {
            "WEB_PORT": str(TARGET.web_port),
            "BROKER_URL": f"amqp://guest:guest@127.0.0.1:{free_port()}/",
            "EVENTS_PUBLISH_COOLDOWN": "0",
        }
        web = stack.start("web", procfile_argv("web", TARGET.env(**web_env)), **web_env)
        stack.start_procfile("relay")
        stack.start_workers()
        wait_http(stub, TARGET.stub_port, "/")
        wait_http(web, TARGET.web_port, "/api/products/?page_size=1")
        for buyer, purpose in enumerate(("warm-up", "pictured")):
            trace_id = place_order(workload, buyer)
            spans = whole_trace(receiver, trace_id, stack)
            log(f"{purpose} order: trace {trace_id}, {len(spans)} spans")
    finally:
        stack.stop_all()
        receiver.close()
    return spans


def place_order(workload: Workload, buyer: int) -> str:
    """One line of one product, as a client places it; the trace id its event recorded."""
    response = httpx.post(
        f"http://127.0.0.1:{TARGET.web_port}/api/orders/",
        json={"lines": [{"product": workload.products[0], "quantity": 1}]},
        headers={"Authorization": f"Token {workload.tokens[buyer]}", "Idempotency-Key": str(uuid.uuid4())},
        timeout=30,
    )
    response.raise_for_status()
    [(envelope,)] = data.execute(
        TARGET,
        "SELECT envelope FROM events_outboxevent WHERE event_type = 'order.placed' "
        "AND envelope -> 'data' ->> 'order_id' = %s",
        [str(response.json()["id"])],
    )
    trace_id = trace_id_of(envelope)
    if trace_id is None:
        raise RuntimeError(f"the order's event recorded no trace: {envelope}")
    return trace_id


def whole_trace(receiver: OtlpReceiver, trace_id: str, stack: Stack, timeout: float = 90.0) -> list[Span]:
    """The trace once it holds EXPECTED, every span's parent, and has gained nothing for a while."""
    deadline = time.monotonic() + timeout
    count, changed = -1, time.monotonic()
    while time.monotonic() < deadline:
        stack.check_alive()
        spans = receiver.trace(trace_id)
        if len(spans) != count:
            count, changed = len(spans), time.monotonic()
        elif not missing(spans) and time.monotonic() - changed >= QUIET_SECONDS:
            return spans
        time.sleep(0.2)
    raise RuntimeError(f"trace {trace_id} still lacks {missing(receiver.trace(trace_id))}; see {TARGET.logdir}")


def missing(spans: list[Span]) -> list[str]:
    held = {(span.service, span.name) for span in spans}
    ids = {span.span_id for span in spans}
    orphans = [f"the parent {span.parent_id} of {span!r}" for span in spans if span.parent_id not in {"", *ids}]
    return [f"{service}: {name}" for service, name in EXPECTED if (service, name) not in held] + orphans


# --- the picture -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    depth: int
    spans: tuple[Span, ...]  # one span, or a run of sibling SQL statements
    folded: bool = False


def rows(spans: list[Span]) -> list[Row]:
    """Depth first from the root, children by start time, as Jaeger lists a trace."""
    children: dict[str, list[Span]] = defaultdict(list)
    for span in sorted(spans, key=lambda span: span.start_ns):
        children[span.parent_id].append(span)
    listed: list[Row] = []

    def visit(span: Span, depth: int) -> None:
        listed.append(Row(depth, (span,)))
        statements: list[Span] = []
        for child in [*children[span.span_id], None]:
            if child is not None and is_sql(child) and not children[child.span_id]:
                statements.append(child)
                continue
            if statements:
                listed.append(Row(depth + 1, tuple(statements), folded=True))
                statements = []
            if child is not None:
                visit(child, depth + 1)

    for root in children[""]:
        visit(root, 0)
    return listed


def is_sql(span: Span) -> bool:
    return "db.system" in span.attributes or "db.system.name" in span.attributes


def detail(span: Span) -> str:
    """What tells this span from its like at a glance: its event, its URL, its error."""
    attributes = span.attributes
    if span.exception_types:
        return span.exception_types[0].rsplit(".", 1)[-1]
    if "cloudevents.event_type" in attributes:
        return str(attributes["cloudevents.event_type"])
    url = attributes.get("url.full") or attributes.get("http.url")
    status = attributes.get("http.response.status_code") or attributes.get("http.status_code")
    return " ".join(str(part) for part in (url, status) if part)


class Timeline:
    """Where a moment of the trace falls across the lane, in percent of its width.

    A stretch in which no span runs and that takes more than CUT_SHARE of the trace (the event
    waiting in the outbox for the relay's next poll) is drawn as a narrow hatched band instead,
    so that the work either side of it stays readable; the page says how long each band is.
    """

    def __init__(self, spans: list[Span]):
        self.start = min(span.start_ns for span in spans)
        self.end = max(span.end_ns for span in spans)
        self.cuts: list[tuple[int, int]] = []
        busy_until = self.start
        for span in sorted(spans, key=lambda span: span.start_ns):
            if span.start_ns - busy_until > CUT_SHARE * (self.end - self.start):
                self.cuts.append((busy_until, span.start_ns))
            busy_until = max(busy_until, span.end_ns)
        shown = self.end - self.start - sum(end - start for start, end in self.cuts)
        self.percent_per_ns = (100 - CUT_PERCENT * len(self.cuts)) / shown

    def x(self, ns: int) -> float:
        position, shown_from = 0.0, self.start
        for start, end in self.cuts:
            if ns <= start:
                break
            position += (start - shown_from) * self.percent_per_ns
            if ns < end:
                return position + CUT_PERCENT * (ns - start) / (end - start)
            position, shown_from = position + CUT_PERCENT, end
        return position + (ns - shown_from) * self.percent_per_ns

    def ticks(self) -> list[tuple[float, str]]:
        """Round offsets from the start, about a dozen over the parts shown."""
        shown_ms = 100 / self.percent_per_ns / 1e6
        step = next(step for step in (1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000) if shown_ms / step <= 12)
        parts = [self.start, *(ns for cut in self.cuts for ns in cut), self.end]
        ticks = []
        for part_start, part_end in zip(parts[::2], parts[1::2], strict=True):
            first = -(-(part_start - self.start) // (step * 10**6))  # the first multiple of step in the part
            last = (part_end - self.start) // (step * 10**6)
            ticks += [(self.x(self.start + n * step * 10**6), f"{n * step} ms") for n in range(first, last + 1)]
        return ticks

    def crowds_a_cut(self, x: float) -> bool:
        """Whether a tick label at ``x`` would run into a cut's label."""
        return any(abs(x - self.x(start) - CUT_PERCENT / 2) < CUT_PERCENT for start, _ in self.cuts)


def row_html(row: Row, timeline: Timeline) -> str:
    first = row.spans[0]
    colour = COLOURS.get(first.service, "#999")
    left = timeline.x(first.start_ns)
    width = timeline.x(max(span.end_ns for span in row.spans)) - left
    if row.folded:
        count = len(row.spans)
        label = f'<span class="sql">{count} SQL statement{"s" if count > 1 else ""} (psycopg)</span>'
        marks = "".join(
            f'<div class="tick" style="left:{timeline.x(span.start_ns):.3f}%;'
            f'width:{timeline.x(span.end_ns) - timeline.x(span.start_ns):.3f}%;background:{colour}"></div>'
            for span in row.spans
        )
        caption = f"{sum(span.end_ns - span.start_ns for span in row.spans) / 1e6:.1f} ms in all"
    else:
        failed = first.status == "ERROR"
        label = (
            f'<span class="service">{html.escape(first.service)}</span> '
            f'<span class="{"error" if failed else ""}">{"&#9888; " if failed else ""}{html.escape(first.name)}</span>'
            f' <span class="detail">{html.escape(detail(first))}</span>'
        )
        marks = (
            f'<div class="bar{" failed" if failed else ""}" '
            f'style="left:{left:.3f}%;width:{width:.3f}%;background:{colour}"></div>'
        )
        caption = f"{(first.end_ns - first.start_ns) / 1e6:.1f} ms"
    # The duration goes after the bar, or before it when the bar ends near the right edge.
    at = f"left:calc({left + width:.3f}% + 4px)" if left + width < 85 else f"right:calc({100 - left:.3f}% + 4px)"
    return (
        f'<div class="row"><div class="name" style="padding-left:{8 + 14 * row.depth}px;'
        f'border-left-color:{colour}">{label}</div>'
        f'<div class="lane">{marks}<span class="duration" style="{at}">{caption}</span></div></div>'
    )


def anchor(x: float) -> int:
    """How much of a tick's label lies left of the tick, in percent: the edge labels stay inside."""
    return 0 if x < 2 else 100 if x > 98 else 50


def page(spans: list[Span]) -> str:
    timeline = Timeline(spans)
    start, total = timeline.start, timeline.end - timeline.start
    root = min(spans, key=lambda span: (span.parent_id != "", span.start_ns))
    services = [service for service in COLOURS if any(span.service == service for span in spans)]
    listed = rows(spans)
    lines = [row_html(row, timeline) for row in listed]
    ticks = "".join(
        f'<div class="tick-label" style="left:{x:.3f}%;transform:translateX(-{anchor(x)}%)">{label}</div>'
        for x, label in timeline.ticks()
        if not timeline.crowds_a_cut(x)
    )
    lines_at = "".join(f'<div class="line" style="left:{x:.3f}%"></div>' for x, _ in timeline.ticks())
    bands = "".join(
        f'<div class="cut" style="left:{timeline.x(cut_start):.3f}%;width:{CUT_PERCENT}%"></div>'
        for cut_start, _ in timeline.cuts
    )
    band_labels = "".join(
        f'<div class="cut" style="left:{timeline.x(cut_start):.3f}%;width:{CUT_PERCENT}%">'
        f"gap {(cut_end - cut_start) / 1e6:.0f} ms</div>"
        for cut_start, cut_end in timeline.cuts
    )
    note = (
        f"<span>Hatched: <b>{', '.join(f'{(b - a) / 1e6:.0f} ms' for a, b in timeline.cuts)}</b> with no span</span>"
        if timeline.cuts
        else ""
    )
    legend = "".join(
        f'<span class="chip"><i style="background:{COLOURS[service]}"></i>{html.escape(service)}</span>'
        for service in services
    )
    started = datetime.fromtimestamp(start / 1e9, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    depth = max(row.depth for row in listed) + 1
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>One order's trace</title><style>
body {{ margin: 0; width: {WIDTH_PX}px; font: 13px/1.3 "DejaVu Sans", Arial, sans-serif; color: #222; background: #fff; }}
header {{ padding: 12px 16px 8px; border-bottom: 1px solid #ddd; }}
h1 {{ font-size: 18px; margin: 0 0 6px; font-weight: 600; }}
.facts span {{ margin-right: 22px; color: #555; }} .facts b {{ color: #222; }}
.legend {{ margin-top: 8px; }} .chip {{ margin-right: 16px; white-space: nowrap; }}
.chip i {{ display: inline-block; width: 12px; height: 12px; margin-right: 5px; vertical-align: -1px; border-radius: 2px; }}
.row, .axis {{ display: flex; }} .row {{ position: relative; height: 21px; border-bottom: 1px solid #f0f0f0; }}
.row:nth-child(even) {{ background: rgba(0, 0, 0, .025); }}
.name {{ width: 690px; box-sizing: border-box; flex: none; border-left: 4px solid; white-space: nowrap; overflow: hidden;
  text-overflow: ellipsis; line-height: 21px; border-right: 1px solid #ddd; background: #fff; }}
.service {{ color: #666; }} .error {{ color: #c0392b; font-weight: 600; }} .sql {{ color: #777; font-style: italic; }}
.detail {{ color: #888; font-size: 12px; }}
.lane, .scale {{ position: relative; flex: 1; margin: 0 12px; }}
.rows {{ position: relative; }} .grid {{ position: absolute; top: 0; bottom: 0; left: 702px; right: 12px; }}
.line {{ position: absolute; top: 0; bottom: 0; width: 1px; background: #e4e4e4; }}
.cut {{ position: absolute; top: 0; bottom: 0; background: repeating-linear-gradient(135deg, #e8e8e8 0 3px, #fff 3px 7px); }}
.scale .cut {{ text-align: center; line-height: 22px; font-size: 10.5px; color: #333; white-space: nowrap; }}
.bar, .tick {{ position: absolute; top: 4px; height: 13px; min-width: 2px; border-radius: 2px; }}
.tick {{ opacity: .75; }} .bar.failed {{ outline: 2px solid #c0392b; }}
.duration {{ position: absolute; top: 0; line-height: 21px; font-size: 11.5px; color: #555; white-space: nowrap; }}
.axis {{ height: 22px; border-bottom: 1px solid #ddd; background: #f5f5f5; font-size: 11.5px; color: #555; }}
.axis .name {{ border-left-color: transparent; padding-left: 8px; background: none; }}
.tick-label {{ position: absolute; top: 4px; white-space: nowrap; }}
</style></head><body>
<header><h1>{html.escape(root.service)}: {html.escape(root.name)}</h1>
<div class="facts"><span>Trace <b>{root.trace_id}</b></span><span>Started <b>{started}</b></span>
<span>Duration <b>{total / 1e6:.1f} ms</b></span><span>Services <b>{len(services)}</b></span>
<span>Depth <b>{depth}</b></span><span>Total spans <b>{len(spans)}</b></span>{note}</div>
<div class="legend">{legend}</div></header>
<div class="axis"><div class="name">Service &amp; operation</div><div class="scale">{ticks}{band_labels}</div></div>
<div class="rows"><div class="grid">{lines_at}{bands}</div>{"".join(lines)}</div>
</body></html>
"""


def screenshot(document: Path, picture: Path) -> None:
    """The whole page, WIDTH_PX wide, as headless Chromium renders it (as tests/browser starts it)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    driver_path = shutil.which("chromedriver")
    if driver_path is None:
        raise RuntimeError("chromedriver is not installed (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--hide-scrollbars"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        driver.get(document.as_uri())
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": WIDTH_PX, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )
        shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png"})
    finally:
        driver.quit()
    picture.write_bytes(base64.b64decode(shot["data"]))


if __name__ == "__main__":
    raise SystemExit(main())
