"""A full run rewrites docs/benchmarks.md and keeps the sections that benchmarks of their own wrote."""

from bench import report


def test_a_full_report_keeps_the_sections_it_did_not_measure(tmp_path, monkeypatch):
    output = tmp_path / "benchmarks.md"
    output.write_text("# Benchmarks\n\n## Targets\n\nold\n\n## Machine\n\nold machine\n")
    report.replace_section(output, report.TOKENS_HEADING, f"{report.TOKENS_HEADING}\n\ntokens\n")
    report.replace_section(output, report.RECORDER_HEADING, f"{report.RECORDER_HEADING}\n\nrecorder v1\n")
    report.replace_section(output, report.RECORDER_HEADING, f"{report.RECORDER_HEADING}\n\nrecorder v2\n")
    text = output.read_text()
    assert text.count(report.RECORDER_HEADING) == 1
    assert "recorder v1" not in text
    assert text.index(report.TOKENS_HEADING) < text.index(report.RECORDER_HEADING) < text.index("## Machine")

    # This run measured the recorder (its section is in the new report), not the tokens.
    recorder = f"{report.RECORDER_HEADING}\n\nrecorder v3\n"
    new = f"# Benchmarks\n\n## Targets\n\nnew\n\n{recorder}\n## Machine\n\nnew machine\n"
    monkeypatch.setattr(report, "plot", lambda results, png: False)
    monkeypatch.setattr(report, "markdown", lambda results, png: new)
    report.write({}, output)

    text = output.read_text()
    assert "new machine" in text
    assert "old" not in text
    assert "recorder v3" in text
    assert "recorder v2" not in text
    assert f"{report.TOKENS_HEADING}\n\ntokens\n" in text


def test_the_soak_names_what_grew_after_the_warm_up_and_what_kept_a_backlog():
    from bench import soak

    def sample(seconds, web, worker, backlog=0):
        return {
            "seconds": seconds,
            "rss_mib": {"web": web, "order_confirmation": worker},
            "backlog": {"marketplace.order_confirmation": backlog},
            "p99_ms": 10.0,
        }

    # The web grows from 100 to 104 MiB after the warm-up (under 5 MiB: noise); the worker from 60
    # to 70 (over 5 MiB and 5%); its queue ends with a backlog. What the warm-up takes is not growth.
    samples = [sample(30, 80.0, 40.0), sample(60, 100.0, 60.0), sample(90, 102.0, 65.0), sample(120, 104.0, 70.0, 3)]
    results = soak.summarize(samples, orders={"ok": 1200, "failed": 0}, minutes=2, rate=10, sample_seconds=30)

    assert results["processes"]["web"] == {
        "after_warm_up": 100.0, "end": 104.0, "peak": 104.0, "growth_mib": 4.0, "grows": False,
        "second_half_mib_per_minute": 4.0,  # 100 MiB at 60 s, half of the run; 104 at 120 s
    }  # fmt: skip
    assert results["processes"]["order_confirmation"]["grows"] is True
    assert results["growing"] == ["marketplace.order_confirmation", "order_confirmation"]
    assert results["still_rising"] == ["web"]  # under the threshold, but 4 MiB/minute over the second half
    section = soak.markdown(results)
    assert section.startswith(report.SOAK_HEADING + "\n")
    assert "**Growing: marketplace.order_confirmation, order_confirmation.**" in section
    assert "| order_confirmation | 60.0 | 70.0 | 70.0 | +10.0 **grows** | +10.00 |" in section
    assert "| web | 100.0 | 104.0 | 104.0 | +4.0 still rising | +4.00 |" in section
    assert "**Still rising** at the end" in section
