"""`cli.py serve`: the HTTP API and web page, with every model loaded once."""

from __future__ import annotations

from pathlib import Path

import click

from retrieval.commands.common import workspace_path


def _default(path: str | None, name: str) -> str | None:
    """The given path, else the workspace file when it exists (so a bare `serve` works after `make demo`)."""
    if path is not None:
        return path
    candidate = workspace_path(name)
    return str(candidate) if Path(candidate).exists() else None


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; one other machines can reach needs --token or --no-auth.")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--index", "index_dir", type=click.Path(file_okay=False), default=lambda: str(workspace_path("index")),
              show_default="workspace/index", help="Index folder.")
@click.option("--features", type=click.Path(exists=True, dir_okay=False), help="Feature file (default: the one in the sidecar).")
@click.option("--model", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Text encoder checkpoint [default: workspace/text-encoder.npz when present].")
@click.option("--genres", "genres_ckpt", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Genre model checkpoint [default: workspace/genre-late.pt when present].")
@click.option("--image-queries/--no-image-queries", default=None,
              help="Search by uploaded image (loads torch and the backbone) [default: when the backbone loads].")
@click.option("--device", type=click.Choice(["cpu", "cuda", "auto"]), default="cpu", show_default=True,
              help="Device of the image backbone.")
@click.option("--token", envvar="BUSCADOR_TOKEN", default=None,
              help="Bearer token every /api request must send [env: BUSCADOR_TOKEN].")
@click.option("--no-auth", is_flag=True, help="Serve a non-loopback --host without a token.")
@click.option("--cors", "cors", multiple=True, metavar="ORIGIN", help="Allow browser requests from ORIGIN (repeatable).")
@click.option("--max-upload", default="20MB", show_default=True, help="Largest image upload.")
@click.option("--inline-ms", type=click.FloatRange(0), default=20.0, show_default=True,
              help="Answer text and id queries on the event loop when a warm one costs at most this many ms of CPU "
                   "(measured at start-up; 0: always on query threads).")
@click.option("--access-log", is_flag=True, help="Log every request.")
def serve_cmd(host, port, index_dir, features, model, genres_ckpt, image_queries, device, token, no_auth, cors,
              max_upload, inline_ms, access_log) -> None:
    """Serve the search API and web page on http://HOST:PORT (docs at /docs)."""
    import logging

    from indexes.build import parse_size
    from retrieval.serve import ServeConfig, run

    logging.getLogger("retrieval.serve").setLevel(logging.INFO)
    config = ServeConfig(index_dir=index_dir, features=features, model=_default(model, "text-encoder.npz"),
                         genres=_default(genres_ckpt, "genre-late.pt"), image_queries=image_queries, device=device,
                         token=token, cors=tuple(cors), max_upload=parse_size(max_upload), inline_ms=inline_ms)
    run(config, host, port, access_log=access_log, no_auth=no_auth)
