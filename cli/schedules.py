"""`chronos schedules ...`: cron and interval schedules (being built; see issue "CLI")."""

from __future__ import annotations

import typer

app = typer.Typer(help="Cron and interval schedules.", no_args_is_help=True)
