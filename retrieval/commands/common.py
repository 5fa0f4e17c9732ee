"""What every command module shares: the default workspace and the group that prints user errors."""

from __future__ import annotations

import os
from pathlib import Path

import click

WORKSPACE = Path(os.environ.get("BUSCADOR_WORKSPACE", "workspace"))


def workspace_path(*parts: str) -> Path:
    """A path inside the default workspace (``./workspace`` or ``$BUSCADOR_WORKSPACE``)."""
    return WORKSPACE.joinpath(*parts)


class Group(click.Group):
    """Click group that turns library ``UserError`` into a one-line ``Error:`` and exit code 1."""

    def invoke(self, ctx: click.Context):
        from extract.core.errors import UserError

        try:
            return super().invoke(ctx)
        except UserError as exc:
            raise click.ClickException(str(exc)) from None
