"""The plot of API response time against offered load: event-driven API, baseline, no-op floor."""

from __future__ import annotations

from pathlib import Path

from bench.ratios import _get


def plot(results: dict, png: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    series = {"event-driven API": "full_stack", "request-response baseline": "baseline", "no-op floor": "floor"}
    fig, ax = plt.subplots(figsize=(8, 5))
    drawn = False
    for label, key in series.items():
        points = list(_get(results, key, "ramp") or [])
        if at60 := _get(results, key, "at_60"):
            points.append(at60)
        points = sorted((p for p in points if p.get("p50_ms") is not None), key=lambda p: p["offered_rps"])
        if not points:
            continue
        x = [p["offered_rps"] for p in points]
        (line,) = ax.plot(x, [p["p50_ms"] for p in points], marker="o", label=f"{label} p50")
        ax.plot(
            x, [p["p99_ms"] for p in points], marker="x", linestyle="--", color=line.get_color(), label=f"{label} p99"
        )
        drawn = True
    if not drawn:
        plt.close(fig)
        return False
    ax.set(
        xlabel="offered load (orders/s, paced)",
        ylabel="response time (ms)",
        yscale="log",
        title="API response time against offered load (one run, same machine)",
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return True
