"""The subcommands of ``ttc-router``, one module each."""
