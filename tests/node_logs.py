"""Follow a pod's container logs on the real node while the pod is deleted.

The kubelet removes a deleted pod's dead containers, and with them their log files, within
about a second of the last one exiting (its container deletor runs on each ContainerDied
event). A test polling between cycles of the scaler can miss the last lines. A thread holding
the files open reads them to the end: an unlinked file stays readable through an open handle.
"""
import threading
from pathlib import Path

POLL_INTERVAL = 0.05


class PodLogFollower:
    """Reads every container log of `pod` (in tests/kube_node.py's `log_dir`) as it grows,
    from a thread, until `stop()`; `text()` is everything read so far."""

    def __init__(self, real_node, pod: str):
        self._pattern = f"{real_node.namespace}_{pod}_*/*/*.log"
        self._log_dir: Path = real_node.log_dir
        self._handles: dict[Path, object] = {}
        self._chunks: dict[Path, list[str]] = {}
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"follow-{pod}", daemon=True)

    def __enter__(self) -> "PodLogFollower":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=5)
        for handle in self._handles.values():
            handle.close()

    def text(self) -> str:
        with self._lock:
            return "".join("".join(chunks) for _, chunks in sorted(self._chunks.items()))

    def _run(self) -> None:
        while not self._stopped.wait(POLL_INTERVAL):
            for path in self._log_dir.glob(self._pattern):
                if path not in self._handles:
                    try:
                        self._handles[path] = path.open(errors="replace")
                    except FileNotFoundError:  # removed between the glob and the open
                        continue
                    with self._lock:
                        self._chunks[path] = []
            self._read_all()
        self._read_all()

    def _read_all(self) -> None:
        for path, handle in self._handles.items():
            data = handle.read()
            if data:
                with self._lock:
                    self._chunks[path].append(data)
