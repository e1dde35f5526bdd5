"""The scheduled maintenance's child process dies with its parent, also when the parent is killed
with SIGKILL (no clean-up runs there): a `kill -9` of `k2 run` leaves no maintenance running on."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import eventually

PARENT = textwrap.dedent(
    """
    import multiprocessing, sys, time
    from pathlib import Path
    from k2.children import die_with_parent

    def child(parent: int, ready: str) -> None:
        die_with_parent(parent)
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


# A parent running a parse process (source.parse_process), as `k2 run` can: its child must not outlive it
# (it has two ways out: PR_SET_PDEATHSIG, and its pipe's end of file once the parent is gone).
PARSE_PARENT = textwrap.dedent(
    """
    import asyncio, sys, time
    from pathlib import Path
    from k2.feed.offload import ParseProcess
    from k2.sources import RawFrame
    from tests.conftest import binance_parser

    if __name__ == "__main__":
        process = ParseProcess(binance_parser(is_sample_data=True), "binance")
        asyncio.run(process.parse([RawFrame(b"{}", 1)]))  # started and answering
        Path(sys.argv[1]).write_text(str(process._process.pid))
        time.sleep(600)
    """
)


@pytest.mark.parametrize("parent_script", [PARENT, PARSE_PARENT], ids=["maintenance", "parse-process"])
def test_the_child_dies_when_its_parent_is_killed_9(tmp_path: Path, parent_script: str) -> None:
    script, ready = tmp_path / "parent.py", tmp_path / "ready"
    script.write_text(parent_script)
    root = str(Path(__file__).resolve().parents[2])  # the repository, for `tests.conftest`
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    parent = subprocess.Popen([sys.executable, str(script), str(ready)], env=env)
    try:
        child = int(eventually(lambda: ready.exists() and ready.read_text(), timeout=60, interval=0.05))
        assert _alive(child)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(10)
        eventually(lambda: not _alive(child), timeout=30, interval=0.05)
    finally:
        parent.kill()
