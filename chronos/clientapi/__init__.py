"""The Client's parts, one module per noun; ``chronos.client.Client`` is the front door over them."""
