"""Helpers for K2's own short- and long-lived child processes (table maintenance, parsing)."""

from __future__ import annotations

import ctypes
import os
import signal
import sys


def die_with_parent(parent: int) -> None:
    """Have the kernel kill this process when its parent dies (Linux), also by ``kill -9``.

    Call it first thing in a child started with ``spawn``; ``parent`` is the parent's pid as the
    parent saw it (if it died before the request was in place, the child exits at once). The request
    follows the parent's *thread* that started the child: start children from a long-lived thread.
    """
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(1)
