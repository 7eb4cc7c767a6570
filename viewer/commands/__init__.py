"""One module per ``histoviewer`` subcommand; each exposes ``register(subparsers)``."""
