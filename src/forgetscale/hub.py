"""Whether the Hugging Face hub can be reached, asked once and quickly.

Without a network, huggingface_hub retries each request five times with back-off (about
half a minute and dozens of warning lines) before the one line that says the files are not
cached. :func:`require_hub` asks once, with a short timeout: when the hub cannot be reached
it switches the hub libraries to offline mode (cached files load at once, without retries)
and refuses, in one line, a hub id or data set that is not in the local cache.
"""

from __future__ import annotations

import functools
import os
import socket
import sys
from urllib.parse import urlparse

from forgetscale.errors import UserError

#: Seconds to wait for the hub's host to answer before calling it unreachable.
CONNECT_TIMEOUT_S = 3.0


@functools.cache
def hub_unreachable() -> str | None:
    """Why the hub cannot be reached (``HF_HUB_OFFLINE`` set, no name resolution, no
    connection), or ``None`` when it answers."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    url = urlparse(constants.ENDPOINT)
    host, port = (
        url.hostname or "huggingface.co",
        url.port or (443 if url.scheme == "https" else 80),
    )
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            return None
    except OSError as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        return f"{host}: {reason}"


def go_offline() -> None:
    """Make huggingface_hub, transformers and datasets read their caches without asking."""
    from huggingface_hub import constants

    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    constants.HF_HUB_OFFLINE = True
    datasets_config = sys.modules.get("datasets.config")  # read at its import: set it too
    if datasets_config is not None:
        datasets_config.HF_HUB_OFFLINE = datasets_config.HF_DATASETS_OFFLINE = True


def require_hub(repo_id: str, what: str, *, repo_type: str = "model", hint: str = "") -> None:
    """Refuse ``repo_id`` in one line when the hub cannot be reached and it is not cached;
    when the hub cannot be reached and it is cached, the cache is used without retries."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise UserError(
            f"could not load {what} {repo_id}: not a local folder, and not a hub id ({exc})"
        ) from exc
    why = hub_unreachable()
    if why is None:
        return
    go_offline()
    if repo_type == "model":
        from huggingface_hub import try_to_load_from_cache

        if isinstance(try_to_load_from_cache(repo_id, "config.json"), str):
            return
        raise UserError(
            f"{what} {repo_id} is not in the local Hugging Face cache and the hub cannot be "
            f"reached ({why}){hint}"
        )
