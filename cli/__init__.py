"""The `chronos` command line: one module per noun, composed in cli/main.py."""
