"""The little of systemd an agent needs: sd_notify (READY, WATCHDOG, STOPPING, STATUS) and journald-style logs."""

import logging
import os
import socket
import sys


def notify(message: str) -> bool:
    """Send message to $NOTIFY_SOCKET; False when not run by systemd (nothing to tell)."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    if path.startswith("@"):
        path = "\0" + path[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        try:
            s.connect(path)
            s.sendall(message.encode())
        except OSError:
            return False
    return True


def watchdog_interval() -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WatchdogSec), or None when no watchdog is set."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2e6


class JournalFormatter(logging.Formatter):
    """'<priority>logger: message', which journald reads as the entry's priority (no timestamp: it adds one)."""

    PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}

    def format(self, record):
        return f"<{self.PRIORITY.get(record.levelno, 6)}>{record.name}: {super().format(record)}"


def configure_logging(level: int, style: str = "auto") -> None:
    """Human lines on a terminal, journald lines under systemd (style auto picks by $JOURNAL_STREAM)."""
    handler = logging.StreamHandler(sys.stderr)
    journal = style == "journal" or (style == "auto" and "JOURNAL_STREAM" in os.environ)
    handler.setFormatter(JournalFormatter("%(message)s") if journal
                         else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
