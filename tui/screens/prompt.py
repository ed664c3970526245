"""The k9s-style ':' prompt: type a view name (with Tab completion) and press enter.

Also a one-line question for an action (a queue's concurrency): ``PromptScreen(placeholder, words, value)``."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import ModalScreen
from textual.suggester import SuggestFromList
from textual.widgets import Input

WORDS = ["jobs", "queues", "workers", "schedules", "dlq", "limits", "events", "logs", "dashboard", "failed",
         "help", "quit", "job "]
PLACEHOLDER = ":jobs :queues :workers :schedules :dlq :limits :events :help :quit"


class PromptScreen(ModalScreen[str | None]):
    BINDINGS = [Binding("escape", "cancel", "Cancel")]
    DEFAULT_CSS = """
    PromptScreen { align: center top; background: $background 30%; }
    PromptScreen Input { width: 80%; margin-top: 1; border: tall $accent; }
    """

    def __init__(self, placeholder: str = PLACEHOLDER, words: list[str] | None = None, value: str = "") -> None:
        super().__init__()
        self.placeholder = placeholder
        self.words = WORDS if words is None else words
        self.value = value

    def compose(self) -> ComposeResult:
        yield Input(value=self.value, placeholder=self.placeholder, id="prompt",
                    suggester=SuggestFromList(self.words, case_sensitive=False) if self.words else None)

    def on_mount(self) -> None:
        self.query_one(Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip().lstrip(":"))

    def action_cancel(self) -> None:
        self.dismiss(None)
