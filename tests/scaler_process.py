"""The scaler command as a child process of a test, its output in a log file."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

from .waiting import until


class ScalerProcess:
    """`argv` started now, stdout and stderr to `log`; `stop()` ends it (tests call it in
    a `finally`)."""

    def __init__(self, argv: list[str], log: Path):
        self.log_path, self.log = log, open(log, "w")
        self.process = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT)
        self.pid = self.process.pid

    def text(self) -> str:
        return self.log_path.read_text()

    async def logged(self, line: str, *, timeout: float) -> float:
        """Wait for `line` in the log; the monotonic time it was seen (polled every 0.05 s)."""
        await until(lambda: line in self.text(), timeout=timeout, interval=0.05, process=self.process,
                    what=f"{line!r} in {self.log_path.name}", log=self.log_path)
        return time.monotonic()

    def stop(self, sig: int = signal.SIGKILL) -> int:
        """Send `sig` if it still runs; its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        code = self.process.wait(timeout=60)
        self.log.close()
        return code
