"""The real kaggle client, authenticated, with its failures turned into one-line errors.

Shared by every command that talks to Kaggle (prepare, push, leaderboard --refresh). The client is
imported lazily: importing it authenticates, and it fixes its endpoint (KAGGLE_API_ENVIRONMENT)
when first imported.
"""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Iterator
from typing import Any

from pipeline.core.errors import CellpipeError


def kaggle_api() -> Any:
    """The kaggle client, authenticated; a one-line error without credentials."""
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
        raise CellpipeError(f"{what}: cannot reach Kaggle (offline?): {reason}") from None
    except requests.exceptions.HTTPError as e:
        status = e.response.status_code if e.response is not None else "?"
        hint = f": {refused_hint}" if refused_hint and status in (401, 403) else ""
        raise CellpipeError(f"{what}: Kaggle answered HTTP {status}{hint}") from None
    except ValueError as e:  # the client's checks of the metadata
        raise CellpipeError(f"{what}: {e}") from None
