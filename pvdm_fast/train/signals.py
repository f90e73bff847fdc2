"""SIGTERM / SIGINT during training: finish the current step, save a checkpoint, then exit.

The handler only sets a flag; the step loop polls it between optimizer steps, where the model,
optimizer and data position are consistent, so the saved checkpoint resumes exactly. A second
signal while saving restores the default behaviour (an impatient second Ctrl-C kills the process).
"""

from __future__ import annotations

import signal
import threading


class StopRequest:
    """Context manager installing the handlers (main thread only); `requested` names the signal."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested: str | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        self.requested = signal.Signals(signum).name
        for sig, old in self._previous.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._previous.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)
        self._previous = {}
