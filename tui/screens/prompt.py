"""The k9s-style ':' prompt: type a view name (with Tab completion) and press enter."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import ModalScreen
from textual.suggester import SuggestFromList
from textual.widgets import Input

WORDS = ["jobs", "queues", "workers", "schedules", "dlq", "events", "logs", "dashboard", "failed", "help",
         "quit", "job "]


class PromptScreen(ModalScreen[str | None]):
    BINDINGS = [Binding("escape", "cancel", "Cancel")]
    DEFAULT_CSS = """
    PromptScreen { align: center top; background: $background 30%; }
    PromptScreen Input { width: 80%; margin-top: 1; border: tall $accent; }
    """

    def compose(self) -> ComposeResult:
        yield Input(placeholder=":jobs :queues :workers :schedules :dlq :events :help :quit", id="prompt",
                    suggester=SuggestFromList(WORDS, case_sensitive=False))

    def on_mount(self) -> None:
        self.query_one(Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip().lstrip(":"))

    def action_cancel(self) -> None:
        self.dismiss(None)
