"""The stop signals a command received: SIGTERM raised as Terminated, SIGINT as Python's
KeyboardInterrupt (`imgpipe.cli.output.sigterm_raises` installs the handlers), and a record of
each, so code whose library turned the interrupt into its own error (Beam's runners wrap it
in a RuntimeError) still knows the command was stopped. No imports: the CLI and the
orchestration both read it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C's KeyboardInterrupt so the same cleanup runs."""

    how = "terminated (SIGTERM)"  # what a run's record says (`how` of a KeyboardInterrupt: Ctrl-C)


# The stop signals received while a command ran (sigterm_raises): a library that catches the
# KeyboardInterrupt or Terminated raised in its code and raises its own error instead (Beam's
# runners wrap it in a RuntimeError) cannot hide that the command was stopped.
received_signals: list[str] = []


def stopped_by() -> type[KeyboardInterrupt] | None:
    """Terminated or KeyboardInterrupt when SIGTERM or SIGINT arrived while the command ran."""
    if "SIGTERM" in received_signals:
        return Terminated
    return KeyboardInterrupt if "SIGINT" in received_signals else None


@contextlib.contextmanager
def held() -> Iterator[None]:
    """While inside, SIGINT and SIGTERM wait: each is recorded, and raised (KeyboardInterrupt, or
    Terminated for SIGTERM) when the block has ended, for a few steps that must not stop half-way
    (an ingest renaming its outputs into place). A signal the process ignores stays ignored;
    outside the main thread nothing changes. An error raised inside goes out as it is."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived: list[int] = []

    def hold(signum, frame):
        arrived.append(signum)

    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(signum) is not signal.SIG_IGN:
            previous[signum] = signal.signal(signum, hold)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if signal.SIGTERM in arrived:
        received_signals.append("SIGTERM")
        raise Terminated()
    if arrived:
        received_signals.append("SIGINT")
        raise KeyboardInterrupt()
