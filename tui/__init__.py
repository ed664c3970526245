"""chronos TUI: the operations console (``chronos tui``). Built by ``tui.app.make_app``."""
