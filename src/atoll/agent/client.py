"""The agent's HTTP client: every request after the key exists is signed
(:mod:`atoll.agent.wire`).  httpx is imported when a request is first made."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from atoll import errors
from atoll.agent import wire
from atoll.lazy import lazy_module

if TYPE_CHECKING:
    import httpx
    from cryptography.hazmat.primitives.asymmetric import ec
else:
    httpx = lazy_module("httpx")


class AgentClient:
    def __init__(
        self, server: str, device: str, key: ec.EllipticCurvePrivateKey, *, timeout: float = 90.0
    ) -> None:
        self.server = server.rstrip("/")
        self.device = device
        self._key = key
        self._last_ms = 0
        self._http = httpx.Client(base_url=self.server, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def use_key(self, key: ec.EllipticCurvePrivateKey) -> None:
        """Sign the following requests with *key* (after a key rotation)."""
        self._key = key

    def _stamp(self) -> int:
        # Strictly increasing, even for two requests in one millisecond.
        self._last_ms = max(time.time_ns() // 1_000_000, self._last_ms + 1)
        return self._last_ms

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: dict[str, str] | None = None,
        signed: bool = True,
    ) -> httpx.Response:
        data = b"" if body is None else json.dumps(body).encode()
        request = self._http.build_request(
            method,
            path,
            content=data or None,
            params=params,
            headers={"Content-Type": "application/json"} if data else None,
        )
        if signed:
            target = request.url.raw_path.decode()
            request.headers.update(
                wire.signed_headers(self._key, self.device, method, target, data, self._stamp())
            )
        try:
            response = self._http.send(request)
        except httpx.HTTPError as exc:
            raise errors.FleetUnavailableError(f"fleet server {self.server}: {exc}") from None
        if response.status_code >= 500:
            raise errors.FleetUnavailableError(
                f"fleet server {self.server}: HTTP {response.status_code} {_error(response)}"
            )
        return response


def _error(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        return ""
    return str(data.get("error", "")) if isinstance(data, dict) else ""


def refusal(response: httpx.Response) -> str:
    """The server's one-line reason for a 4xx answer."""
    return _error(response) or f"HTTP {response.status_code}"
