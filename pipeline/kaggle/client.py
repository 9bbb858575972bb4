"""The real kaggle client, authenticated, with its failures turned into one-line errors; and its
config file, kaggle.json, read and checked in one place.

Shared by every command that talks to Kaggle (prepare, push, leaderboard --refresh). The client is
imported lazily: importing it authenticates, and it fixes its endpoint (KAGGLE_API_ENVIRONMENT)
when first imported.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.core.errors import CellpipeError
from pipeline.core.fileio import read_json

KAGGLE_JSON_FIELDS = ("username", "key")  # KAGGLE_USERNAME, KAGGLE_KEY stand in for them
JSON_TYPES = {dict: "an object", list: "an array", str: "a string", int: "a number"}
JSON_TYPES |= {float: "a number", bool: "a boolean", type(None): "null"}


def kaggle_json_path() -> Path:
    """Where the kaggle client reads kaggle.json, as it decides: KAGGLE_CONFIG_DIR, else
    ~/.kaggle, else (on Linux, when ~/.kaggle does not exist) $XDG_CONFIG_HOME/kaggle."""
    if os.environ.get("KAGGLE_CONFIG_DIR"):
        return Path(os.environ["KAGGLE_CONFIG_DIR"]) / "kaggle.json"
    folder = Path.home() / ".kaggle"
    if sys.platform.startswith("linux") and not folder.exists():
        folder = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "kaggle"
    return folder / "kaggle.json"


def read_kaggle_json() -> dict[str, Any] | None:
    """kaggle.json (None when there is none), with a one-line error naming the file unless it is
    a JSON object whose username and key are non-empty text. A field that the environment sets
    (KAGGLE_USERNAME, KAGGLE_KEY) may be absent, as the client takes those over the file's."""
    path = kaggle_json_path()
    if not path.is_file():
        return None
    data = read_json(path)
    expected = 'expected {"username": "...", "key": "..."} (https://www.kaggle.com/settings, API)'
    if not isinstance(data, dict):
        raise CellpipeError(f"{path}: {JSON_TYPES[type(data)]}, {expected}")
    for field in KAGGLE_JSON_FIELDS:
        if field not in data:
            if os.environ.get(f"KAGGLE_{field.upper()}"):
                continue
            raise CellpipeError(f"{path}: no {field!r}, {expected}")
        value = data[field]  # never quoted: it may be the key
        if not isinstance(value, str) or not value.strip():
            what = "empty" if isinstance(value, str) else JSON_TYPES[type(value)]
            raise CellpipeError(f"{path}: {field!r} is {what}, {expected}")
    return data


def kaggle_username() -> str | None:
    """The account the kaggle client would use, offline: KAGGLE_USERNAME, else kaggle.json's
    (checked even then: the client reads it too); None without either."""
    config = read_kaggle_json()
    return os.environ.get("KAGGLE_USERNAME") or (config or {}).get("username")


def kaggle_api() -> Any:
    """The kaggle client, authenticated; a one-line error without credentials or with a
    malformed kaggle.json (which the client would silently ignore)."""
    read_kaggle_json()
    chatter = io.StringIO()  # the client prints its help text before it gives up
    try:
        with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
            from kaggle.api.kaggle_api_extended import KaggleApi

            api = KaggleApi()
            api.authenticate()
    except SystemExit:
        raise CellpipeError(
            "no Kaggle credentials: put kaggle.json in ~/.kaggle (or set KAGGLE_USERNAME and "
            "KAGGLE_KEY); see https://www.kaggle.com/settings, API"
        ) from None
    return api


@contextlib.contextmanager
def kaggle_call(what: str, refused_hint: str = "") -> Iterator[None]:
    """Turn the client's failures (offline, HTTP errors, its own checks) into one line."""
    import requests

    try:
        yield
    except requests.exceptions.ConnectionError as e:
        errno = re.search(r"\[Errno -?\d+\] [^'\")]+", str(e))  # the socket's own words
        reason = errno.group(0) if errno else type(e).__name__
        raise CellpipeError(f"{what}: cannot reach Kaggle (offline?): {reason}") from e
    except requests.exceptions.HTTPError as e:
        status = e.response.status_code if e.response is not None else "?"
        hint = f": {refused_hint}" if refused_hint and status in (401, 403) else ""
        raise CellpipeError(f"{what}: Kaggle answered HTTP {status}{hint}") from e
    except ValueError as e:  # the client's checks of the metadata
        raise CellpipeError(f"{what}: {e}") from e
