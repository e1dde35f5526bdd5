"""freeze_start_up: start-up's garbage is freed, what is alive is frozen (never scanned again)."""

from __future__ import annotations

import gc
import weakref

from k2.services.lifecycle import freeze_start_up


class _Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the collector frees it


def test_start_up_garbage_is_collected_and_the_living_heap_frozen() -> None:
    gc.unfreeze()
    gc.disable()  # no automatic collection between here and the call: only freeze_start_up's own
    garbage = _Node()
    dead = weakref.ref(garbage)
    alive = _Node()
    del garbage
    assert dead() is not None  # a cycle outlives its last reference until a collection
    try:
        freeze_start_up()
        assert dead() is None  # collected, not frozen
        assert gc.get_freeze_count() > 0
        assert not any(o is alive for o in gc.get_objects())  # frozen objects are out of every generation
    finally:
        gc.unfreeze()
        gc.enable()
    assert any(o is alive for o in gc.get_objects())
