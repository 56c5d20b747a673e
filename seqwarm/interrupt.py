"""Ctrl-C and SIGTERM during training: finish the step, write a checkpoint, exit with a one-line message.

`graceful_stop()` is installed by `seqwarm.lifecycle.train` around a run (never on import) and puts the
previous handlers back after. The first SIGINT or SIGTERM only sets `requested`; the training loop
looks at it after each step, saves a checkpoint and raises `Interrupted`, which the CLI prints as one
line and turns into the exit code of the signal: 130 for SIGINT, 143 for SIGTERM (128 + the signal
number, what a shell reports for a process the signal killed). A second signal stops at once, with
the same exit code and no new checkpoint: the last one written is still whole (saves are atomic).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

from seqwarm.errors import SeqwarmError

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(SeqwarmError):
    """Training stopped on a signal; `exit_code` is the CLI's (128 + the signal number)."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum


class StopRequest:
    """The first signal received while installed, or None."""

    def __init__(self) -> None:
        self.requested: int | None = None

    @property
    def name(self) -> str:
        return signal.Signals(self.requested).name if self.requested else ""

    def handle(self, signum: int, frame) -> None:
        if self.requested is not None:
            raise Interrupted(
                f"{signal.Signals(signum).name} again: stopped at once, without a new checkpoint "
                "(the last one written is whole)",
                signum,
            )
        self.requested = signum


@contextlib.contextmanager
def graceful_stop() -> Iterator[StopRequest]:
    """Catch SIGINT and SIGTERM for the body (main thread only; elsewhere signals keep their handlers)."""
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {s: signal.signal(s, stop.handle) for s in SIGNALS}
    try:
        yield stop
    finally:
        for s, handler in previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)  # None: set outside Python
