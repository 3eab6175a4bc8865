"""headwater.heap: a loop's frozen heap is thawed when the loop ends."""

from __future__ import annotations

import gc

from headwater.heap import frozen_heap


def test_frozen_heap_freezes_survivors_and_thaws_on_exit() -> None:
    gc.unfreeze()
    keep = [object() for _ in range(10)]  # noqa: F841 - alive across the freeze
    with frozen_heap():
        assert gc.get_freeze_count() > 0
    assert gc.get_freeze_count() == 0


def test_frozen_heap_thaws_when_the_loop_raises() -> None:
    gc.unfreeze()
    try:
        with frozen_heap():
            raise RuntimeError("loop failed")
    except RuntimeError:
        pass
    assert gc.get_freeze_count() == 0
