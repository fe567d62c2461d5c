"""Built-in command groups of the CLI."""
