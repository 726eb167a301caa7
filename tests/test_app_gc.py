"""The app freezes what survives a full garbage collection, so the next one walks only newer
objects (a full walk of the UI's heap stalled the loop ~100-250 ms while re-indexing)."""

from __future__ import annotations

import gc

from tui.app import _freeze_survivors


def test_a_full_collection_freezes_its_survivors_and_a_young_one_does_not() -> None:
    before = gc.get_freeze_count()
    gc.callbacks.append(_freeze_survivors)
    try:
        kept = [[n] for n in range(2000)]
        gc.collect(0)
        assert gc.get_freeze_count() == before
        gc.collect()
        assert gc.get_freeze_count() >= before + len(kept)
        assert gc.get_objects(2) == []
    finally:
        gc.callbacks.remove(_freeze_survivors)
        if not before:
            gc.unfreeze()
