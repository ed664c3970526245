"""cas.update: the one read-decide-write loop (against an in-memory revisioned value)."""

import pytest

from chronos import cas
from chronos.errors import ConflictError


class Box:
    """A value with a revision; ``write`` is compare-and-set; ``moves`` writes sneak in first."""

    def __init__(self, value: int, moves: int = 0) -> None:
        self.value, self.revision, self.moves, self.reads, self.writes = value, 1, moves, 0, 0

    async def read(self) -> tuple[int, int]:
        self.reads += 1
        return self.value, self.revision

    async def write(self, new: int, revision: int) -> int:
        self.writes += 1
        if self.moves:  # someone else wrote meanwhile
            self.moves -= 1
            self.value, self.revision = self.value + 100, self.revision + 1
        if revision != self.revision:
            raise ConflictError("moved")
        self.value, self.revision = new, self.revision + 1
        return new


async def test_decides_on_the_fresh_value_after_a_conflict():
    box = Box(1, moves=2)
    out = await cas.update(box.read, lambda v, _r: v + 1, box.write)
    assert out == 202 and box.value == 202  # decided on the value the other writers left
    assert box.reads == 3 and box.writes == 3


async def test_a_value_in_hand_costs_no_read():
    box = Box(1)
    assert await cas.update(box.read, lambda v, _r: v * 10, box.write, seen=(1, 1)) == 10
    assert box.reads == 0


async def test_stop_writes_nothing_and_returns_its_value():
    box = Box(5)
    assert await cas.update(box.read, lambda v, _r: cas.Stop("done") if v == 5 else v, box.write) == "done"
    assert box.writes == 0


async def test_bounded_retry_ends_in_a_conflict_naming_what():
    box = Box(1, moves=10)
    with pytest.raises(ConflictError, match="job j1 kept changing; try again"):
        await cas.update(box.read, lambda v, _r: v + 1, box.write, attempts=3, what="job j1")
    assert box.writes == 3
