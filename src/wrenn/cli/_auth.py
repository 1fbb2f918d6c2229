"""Where the CLI's credentials come from: WRENN_API_KEY / WRENN_BASE_URL, else what `wrenn up` saved."""

from __future__ import annotations

import os

from ._platform import DEFAULT_DATA_DIR, Platform


class NoCredentials(Exception):
    pass


def credentials() -> tuple[str, str]:
    key, base = os.environ.get("WRENN_API_KEY"), os.environ.get("WRENN_BASE_URL")
    if key and base:
        return key, base
    platform = Platform.load(DEFAULT_DATA_DIR)
    if platform is not None:
        return key or platform.api_key, base or platform.base_url
    if key:
        return key, base or "http://localhost:8080"
    raise NoCredentials(
        "no credentials: set WRENN_API_KEY and WRENN_BASE_URL, or run `wrenn up` (see `wrenn env`)"
    )


def admin() -> tuple[str, str, str]:
    """(base URL, admin email, admin password) of the platform `wrenn up` started here."""
    platform = Platform.load(DEFAULT_DATA_DIR)
    if platform is None:
        raise NoCredentials("host management needs the admin account that `wrenn up` created; none found")
    return platform.base_url, platform.admin_email, platform.admin_password
