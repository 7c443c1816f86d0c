"""Waiting for something that happens in another process."""

from __future__ import annotations

import time

import pytest


def eventually(check, *, timeout: float = 15.0, interval: float = 0.1, message: str = "condition"):
    """Poll ``check`` until it returns something truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)
