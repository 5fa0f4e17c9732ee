"""``cli.py serve``: an HTTP API and a web page answering from warm models (FastAPI + uvicorn)."""

from retrieval.serve.app import create_app, run
from retrieval.serve.config import ServeConfig, check_exposure, is_loopback
from retrieval.serve.engine import Engine

__all__ = ["Engine", "ServeConfig", "check_exposure", "create_app", "is_loopback", "run"]
