"""What every command line shares: a console for messages (stderr), one for results (stdout), one-line errors."""
from __future__ import annotations

import typer
from rich.console import Console

console = Console(stderr=True)  # progress, messages and errors
out = Console()  # results: JSON, tables


def fail(message: str, code: int = 2) -> None:
    """Print a one-line error and exit with ``code``."""
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)
