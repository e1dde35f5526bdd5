"""The scheduled maintenance's child process dies with its parent, also when the parent is killed
with SIGKILL (no clean-up runs there): a `kill -9` of `k2 run` leaves no maintenance running on."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.conftest import eventually

PARENT = textwrap.dedent(
    """
    import multiprocessing, sys, time
    from pathlib import Path
    from k2.services.maintain import _die_with_parent

    def child(parent: int, ready: str) -> None:
        _die_with_parent(parent)
        Path(ready).write_text(str(__import__("os").getpid()))
        time.sleep(600)

    if __name__ == "__main__":
        import os
        context = multiprocessing.get_context("spawn")
        context.Process(target=child, args=(os.getpid(), sys.argv[1]), daemon=True).start()
        time.sleep(600)
    """
)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_the_child_dies_when_its_parent_is_killed_9(tmp_path: Path) -> None:
    script, ready = tmp_path / "parent.py", tmp_path / "ready"
    script.write_text(PARENT)
    parent = subprocess.Popen([sys.executable, str(script), str(ready)])
    try:
        child = int(eventually(lambda: ready.exists() and ready.read_text(), timeout=60, interval=0.05))
        assert _alive(child)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(10)
        eventually(lambda: not _alive(child), timeout=30, interval=0.05)
    finally:
        parent.kill()
