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
