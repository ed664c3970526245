"""One compare-and-set update: read, decide on the fresh value, write on its revision; bounded retry.

Every read-modify-write of a stored record (jobs, schedules) goes through ``update``:

    fresh value --decide--> Stop(result)         nothing written, ``result`` returned
                       \\--> new value --write(new, revision)--> result
                                          ConflictError: it moved; read again, decide again

``decide`` is a plain function of the fresh value and its revision: side effects (acks, DLQ
writes, events) belong to the caller, after ``update`` returns, so a retry never repeats them.
The first round may start from a value already in hand (a job message carries its record), so
the common case costs no read.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from .errors import ConflictError

T = TypeVar("T")  # the stored value as read
N = TypeVar("N")  # what decide asks to write
R = TypeVar("R")  # what update returns
V = TypeVar("V", covariant=True)  # what a Stop carries: one kind of R

DEFAULT_ATTEMPTS = 5


class Stop(Generic[V]):
    """A decision to write nothing; ``update`` returns ``value``."""

    __slots__ = ("_value",)

    def __init__(self, value: V) -> None:
        self._value = value

    @property
    def value(self) -> V:
        return self._value


async def update(
    read: Callable[[], Awaitable[tuple[T, int]]],
    decide: Callable[[T, int], N | Stop[R]],
    write: Callable[[N, int], Awaitable[R]],
    *,
    seen: tuple[T, int] | None = None,
    attempts: int = DEFAULT_ATTEMPTS,
    what: str = "record",
) -> R:
    """Decide on ``seen`` (or a fresh ``read()``), write on its revision, re-read on ConflictError.

    ``read`` returns (value, revision) and may raise (not found: the caller's to handle).
    ``write(new, revision)`` is a compare-and-set that raises ConflictError if the value moved.
    After ``attempts`` conflicts in a row: ConflictError("<what> kept changing; try again").
    """
    current = seen
    for _ in range(attempts):
        if current is None:
            current = await read()
        value, revision = current
        decision = decide(value, revision)
        if isinstance(decision, Stop):
            return decision.value
        try:
            return await write(decision, revision)
        except ConflictError:
            current = None
    raise ConflictError(f"{what} kept changing; try again")
