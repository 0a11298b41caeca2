"""The one place the scaler reads the clock, so that tests can control time."""

import time


def now() -> float:
    """Wall-clock seconds since the epoch (persisted marks must survive restarts)."""
    return time.time()
