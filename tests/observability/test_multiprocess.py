"""The metrics directory: wiped only when every process that wrote to it is gone."""

import os
import subprocess

from prometheus_client.mmap_dict import MmapedDict, mmap_key

from marketplace.metrics import multiprocess


def _dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def _files(directory, *names):
    for name in names:
        (directory / name).write_bytes(b"")


def test_files_of_this_hosts_stopped_processes_are_wiped_at_start(tmp_path):
    dead = _dead_pid()
    host = multiprocess.HOST
    _files(tmp_path, f"counter_{host}-{dead}.db", f"histogram_{host}-{dead}.db", f"gauge_livesum_{host}-{dead}.db")

    multiprocess.prepare_directory(str(tmp_path))

    assert list(tmp_path.iterdir()) == []


def test_counts_of_exited_processes_stay_while_others_run(tmp_path):
    dead = _dead_pid()
    host = multiprocess.HOST
    _files(
        tmp_path,
        f"counter_{host}-{os.getpid()}.db",
        f"counter_{host}-{dead}.db",
        f"histogram_{host}-{dead}.db",
        f"gauge_livesum_{host}-{dead}.db",
        f"gauge_all_{host}-{dead}.db",
    )

    multiprocess.prepare_directory(str(tmp_path))

    # Its counters stay in the totals (a shrinking total would read as a counter reset); its live
    # gauge is gone, its "all" gauge (pid-labelled, kept by design) stays.
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
        [
            f"counter_{host}-{os.getpid()}.db",
            f"counter_{host}-{dead}.db",
            f"histogram_{host}-{dead}.db",
            f"gauge_all_{host}-{dead}.db",
        ]
    )


def test_files_of_other_hosts_are_never_wiped(tmp_path):
    dead = _dead_pid()
    _files(tmp_path, f"counter_{multiprocess.HOST}-{dead}.db", f"counter_web-container-{dead}.db")

    multiprocess.prepare_directory(str(tmp_path))

    assert len(list(tmp_path.iterdir())) == 2


def test_an_exiting_pool_process_is_marked_dead(tmp_path, monkeypatch):
    monkeypatch.setenv(multiprocess.ENV, str(tmp_path))
    pid = 4242
    host = multiprocess.HOST
    _files(tmp_path, f"counter_{host}-{pid}.db", f"gauge_livemax_{host}-{pid}.db")

    multiprocess.mark_pool_process_dead(pid=pid, exitcode=0)

    assert [path.name for path in tmp_path.iterdir()] == [f"counter_{host}-{pid}.db"]


def test_a_scrape_leaves_out_a_file_its_process_is_still_creating(tmp_path):
    # prometheus_client creates a file empty and sizes it a moment later; a scrape in between (or
    # after a process was killed in between) must still show every other process's counts.
    written = MmapedDict(str(tmp_path / f"counter_{multiprocess.HOST}-1.db"))
    written.write_value(mmap_key("orders_placed", "orders_placed_total", [], [], "Orders placed."), 3.0, 0.0)
    written.close()
    _files(tmp_path, f"counter_{multiprocess.HOST}-2.db")

    samples = [
        (sample.name, sample.value) for metric in multiprocess.FilesCollector(str(tmp_path)).collect()
        for sample in metric.samples
    ]  # fmt: skip

    assert samples == [("orders_placed_total", 3.0)]
