"""What ``cli.py serve`` is started with: artifact paths, limits and access rules (one frozen dataclass)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from extract.core.errors import UserError
from extract.images import DEFAULT_MAX_PIXELS

MB = 1024 * 1024


@dataclass(frozen=True)
class ServeConfig:
    """Artifacts to keep warm and the limits every request is held to.

    ``model`` (text queries) and ``genres`` are optional; ``image_queries`` is ``None`` for "when the
    feature file records a backbone that loads", ``True`` to require it, ``False`` to turn uploads off.
    ``token`` is the bearer token every ``/api`` route then asks for (``None``: no token).
    ``query_threads`` answer the queries (encoding, index search); ``None``: its CPUs + 4, at most 32.
    Text and id queries are answered on the event loop instead when a warm one costs at most ``inline_ms``
    of CPU (measured at start-up; ``0``: always on the query threads): a hand-off to a thread costs two
    scheduler wake-ups, which on a busy machine take longer than such a query.
    """

    index_dir: str
    features: str | None = None
    model: str | None = None
    genres: str | None = None
    image_queries: bool | None = None
    device: str = "cpu"
    token: str | None = None
    cors: tuple[str, ...] = ()
    max_upload: int = 20 * MB
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_query_chars: int = 500
    max_k: int = 100
    max_offset: int = 1000
    max_terms: int = 8
    max_batch: int = 64
    query_threads: int | None = None
    inline_ms: float = 20.0
    thumb_cache_bytes: int = 64 * MB
    thumb_sizes: tuple[int, int] = field(default=(16, 1024))


def is_loopback(host: str) -> bool:
    """True for ``localhost``, ``127.0.0.0/8`` and ``::1``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, token: str | None, no_auth: bool) -> None:
    """Refuse to listen beyond this machine without a token, unless ``--no-auth`` says so explicitly."""
    if token is not None and len(token) < 8:
        raise UserError("--token must be at least 8 characters; e.g. `python -c 'import secrets; print(secrets.token_urlsafe())'`")
    if token is not None and no_auth:
        raise UserError("--token and --no-auth contradict each other; pass one")
    if not is_loopback(host) and token is None and not no_auth:
        raise UserError(f"--host {host} is reachable from other machines; pass --token TOKEN (or $BUSCADOR_TOKEN) "
                        "so every /api request must carry it, or --no-auth to serve without one")
