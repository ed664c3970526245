"""Garbage-collector settings for a process that serves jobs (worker, scheduler).

Python collects its youngest generation every 700 tracked allocations and, every hundred of
those, traverses the whole heap. A service allocates a few dozen objects per job, so with the
defaults the collector ran every dozen jobs and its full passes walked every module and class
loaded at start-up. Here what is alive at start-up is frozen out of collection and the young
generation is collected far less often: reference cycles still go, a little later.
"""

from __future__ import annotations

import gc

DEFAULT_GEN0 = 700  # Python's own; a threshold someone else set is left alone


def tune_gc(gen0: int, gen1: int | None = None, gen2: int | None = None) -> bool:
    """Freeze what is alive now and collect the young generation every ``gen0`` allocations.
    Once per process: False (nothing changed) when the threshold is no longer Python's default."""
    g0, g1, g2 = gc.get_threshold()
    if g0 != DEFAULT_GEN0:
        return False
    gc.collect()
    gc.freeze()
    gc.set_threshold(gen0, g1 if gen1 is None else gen1, g2 if gen2 is None else gen2)
    return True
