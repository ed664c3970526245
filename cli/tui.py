"""`chronos tui`: the operations console (being built; see issue "TUI")."""

from __future__ import annotations

import typer

from chronos.errors import ChronosError

from ._shared import state


def tui(ctx: typer.Context) -> None:
    """Open the operations console."""
    state(ctx)
    raise ChronosError("the TUI is not available yet")
