"""The model hub as the loaders see it: offline mode, the reachability probe, and files already in local caches.

The probe exists so that a machine without network fails in seconds instead of retrying for a minute. It asks
the endpoint the hub libraries download from (``HF_ENDPOINT``, default https://huggingface.co) with one HEAD
request through urllib, which honours ``HTTPS_PROXY`` / ``HTTP_PROXY`` / ``NO_PROXY`` like the downloads do (a
bare TCP connection to huggingface.co would call a proxied machine offline). With ``HF_HUB_OFFLINE`` (or
``TRANSFORMERS_OFFLINE``) set nothing is probed at all.
"""

from __future__ import annotations

import logging
import os
import urllib.error
import urllib.request
from collections.abc import Iterable

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://huggingface.co"
_TRUE = ("1", "true", "yes", "on")


def offline() -> bool:
    """Offline mode as huggingface_hub and transformers read it."""
    return any(os.environ.get(k, "").lower() in _TRUE for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_endpoint() -> str:
    """The hub's base URL: ``HF_ENDPOINT`` (a mirror) or huggingface.co."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def hub_reachable(timeout: float = 3.0) -> bool:
    """True when the hub endpoint answers an HTTP request within ``timeout`` seconds (any status: a 4xx still
    proves the network path), through the proxy the environment names; False offline without any request."""
    if offline():
        return False
    endpoint = hub_endpoint()
    # A fresh opener per call: ProxyHandler() reads the proxy variables now, not when the process started.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler())
    try:
        with opener.open(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError, ValueError) as error:
        log.info("model hub %s is unreachable (%s); using local files only", endpoint, error)
        return False


def cached_hf_file(repo_id: str, filenames: Iterable[str]) -> str | None:
    """A file of ``repo_id`` already in the local HF cache (no network access)."""
    from huggingface_hub import try_to_load_from_cache

    for filename in filenames:
        found = try_to_load_from_cache(repo_id, filename)
        if isinstance(found, str) and os.path.isfile(found):
            return found
    return None


def cached_url_file(url: str, directory: str) -> str | None:
    """The download of ``url`` in ``directory`` (torch hub's and CLIP's caches name files by the URL's last part)."""
    path = os.path.join(directory, os.path.basename(url))
    return path if url and os.path.isfile(path) else None
