"""A browser for sign-in tests: it follows redirects across the control plane (in-process, at
`https://testserver`, keeping its cookies as a browser would) and an identity provider (real HTTP on
loopback), and fills in the provider's sign-in form."""

from __future__ import annotations

import re
from html import unescape
from urllib.parse import urljoin

import httpx
from fastapi.testclient import TestClient

CP = "https://testserver"


class Browser:
    def __init__(self, cp: TestClient) -> None:
        self.cp = cp
        self.web = httpx.Client(timeout=15, follow_redirects=False, trust_env=False)

    def request(self, method: str, url: str, **kwargs: object) -> httpx.Response:
        if url.startswith("/") or url.startswith(CP):
            return self.cp.request(method, url, follow_redirects=False, **kwargs)  # type: ignore[arg-type]
        return self.web.request(method, url, **kwargs)  # type: ignore[arg-type]

    def follow(self, response: httpx.Response) -> httpx.Response:
        """Follow redirects until a page answers."""
        for _ in range(10):
            location = response.headers.get("location")
            if response.status_code not in (301, 302, 303, 307) or location is None:
                return response
            response = self.request("GET", urljoin(str(response.request.url), location))
        raise AssertionError("too many redirects")

    def sign_in_at_provider(self, page: httpx.Response, username: str, password: str) -> httpx.Response:
        """Fill in and send the provider's sign-in form (the page `page`); its answer, not followed."""
        assert page.status_code == 200, page.text
        action = re.search(r'<form method="post" action="([^"]+)"', page.text)
        assert action is not None, page.text
        url = urljoin(str(page.request.url), unescape(action.group(1)))
        return self.request("POST", url, data={"username": username, "password": password})

    def sign_in(self, start: str, username: str, password: str) -> httpx.Response:
        """From a URL that starts a sign-in (or the provider's page), through the provider's form, to the
        control plane's callback: its answer (a redirect to the next page or to an error), not followed."""
        page = self.follow(self.request("GET", start))
        back = self.sign_in_at_provider(page, username, password)
        assert back.status_code == 302 and back.headers["location"].startswith(CP), back.text
        return self.request("GET", back.headers["location"])

    def close(self) -> None:
        self.web.close()
