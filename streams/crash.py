"""Stopping a worker that cannot go on, so that its supervisor restarts it."""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

log = logging.getLogger("photoclust")
CRASH_GRACE_S = 20.0
EXIT_CRASHED = 1


async def crash_worker(app: Any, reason: BaseException, why: str) -> None:
    """Crash the Faust app (it then exits non-zero), logging ``why``.

    Faust's stop after a crash was seen to hang in its consumer's shutdown (after a failed
    restore), leaving a process that neither works nor exits: a watchdog ends the process if the
    orderly stop takes longer than ``CRASH_GRACE_S``.
    """
    log.error("event=crash action=exit reason=%r why=%r", str(reason), why)
    watchdog = threading.Timer(CRASH_GRACE_S, _exit_now, args=(reason,))
    watchdog.daemon = True
    watchdog.start()
    await app.crash(reason if isinstance(reason, Exception) else RuntimeError(str(reason)))


def _exit_now(reason: BaseException) -> None:
    log.critical("event=crash_exit reason=%r action='orderly stop took longer than %gs: exit now'", str(reason),
                 CRASH_GRACE_S)
    logging.shutdown()
    os._exit(EXIT_CRASHED)
