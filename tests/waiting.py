"""Bounded waits for the tests, the test drivers and the benchmarks.

`until` polls a condition until it holds, `until_sync` does the same without an event
loop, and `always` watches that a condition keeps holding (an absence can only be
watched for a while). The benchmarks import this module as `tests.waiting`.
"""

from __future__ import annotations

import asyncio
import inspect
import subprocess
import time
from pathlib import Path


class WaitTimeout(AssertionError, TimeoutError):
    """A wait that ran out: a failed expectation to pytest, a TimeoutError to the
    benchmarks that record it and carry on."""


class _Deadline:
    """When a wait has to give up: after `timeout` seconds, or at once when `process`
    has exited; the error names `what`, with the tail of `log`."""

    def __init__(self, *, timeout: float, what: str, process: subprocess.Popen | None, log: Path | None):
        self.timeout, self.what, self.process, self.log = timeout, what, process, log
        self.at = time.monotonic() + timeout

    def check(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            code = self.process.returncode
            raise RuntimeError(f"waiting for {self.what}: exited with {code}{self._tail()}")
        if time.monotonic() > self.at:
            seconds = f"{round(self.timeout, 1):g}"
            raise WaitTimeout(f"timed out after {seconds} s waiting for {self.what}{self._tail()}")

    def _tail(self) -> str:
        if self.log is None:
            return ""
        try:
            return f"; log {self.log}:\n" + self.log.read_text(errors="replace")[-4000:]
        except FileNotFoundError:
            return f"; log {self.log}: (none)"


def _poll(predicate, ignore: tuple[type[BaseException], ...]):
    try:
        return predicate()
    except ignore:
        return None


async def _poll_async(predicate, ignore: tuple[type[BaseException], ...]):
    try:
        result = predicate()
        return await result if inspect.isawaitable(result) else result
    except ignore:
        return None


async def until(predicate, *, timeout: float, what: str, interval: float = 0.2,
                ignore: tuple[type[BaseException], ...] = (), process: subprocess.Popen | None = None,
                log: Path | None = None):
    """Poll `predicate` (a function, or one returning an awaitable) every `interval` s
    until it returns something truthy, and return that. An exception of a type in
    `ignore` counts as "not yet". WaitTimeout after `timeout` s; RuntimeError as soon as
    `process` has exited; either error ends with the tail of `log`."""
    deadline = _Deadline(timeout=timeout, what=what, process=process, log=log)
    while True:
        if result := await _poll_async(predicate, ignore):
            return result
        deadline.check()
        await asyncio.sleep(interval)


def until_sync(predicate, *, timeout: float, what: str, interval: float = 0.2,
               ignore: tuple[type[BaseException], ...] = (), process: subprocess.Popen | None = None,
               log: Path | None = None):
    """`until` for code without an event loop: `predicate` is a plain function, and the
    waits between polls block."""
    deadline = _Deadline(timeout=timeout, what=what, process=process, log=log)
    while True:
        if result := _poll(predicate, ignore):
            return result
        deadline.check()
        time.sleep(interval)


async def always(predicate, *, seconds: float, what: str, interval: float = 0.2) -> None:
    """Assert that `predicate` (a function, or one returning an awaitable) stays truthy,
    polled every `interval` s for `seconds`; the assertion's message is `what`."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        assert await _poll_async(predicate, ()), what
        await asyncio.sleep(interval)
