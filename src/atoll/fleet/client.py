"""The operator's client of the fleet API (what ``atoll fleet`` uses)."""

from __future__ import annotations

from typing import Any

import httpx

from atoll import errors

#: Resource kinds as the command line names them -> their API collection.
KINDS = {
    "fleet": "fleets",
    "channel": "channels",
    "device": "devices",
    "rollout": "rollouts",
    "enrollmentrequest": "enrollmentrequests",
    "event": "events",
}
DEFAULT_SERVER = "http://127.0.0.1:8470"

_BY_STATUS: dict[int, type[errors.AtollError]] = {
    401: errors.FleetAuthError,
    403: errors.FleetRoleError,
    404: errors.FleetNotFoundError,
    409: errors.FleetConflictError,
    413: errors.FleetSpecError,
    422: errors.FleetSpecError,
    503: errors.FleetUnavailableError,
}


def kind_of(word: str) -> str:
    """The API collection for a kind (``fleet``, ``fleets``, ``Fleet`` …)."""
    key = word.lower().removesuffix("s")
    if key not in KINDS:
        raise errors.UsageError(
            f"unknown kind {word!r}", hint=f"one of: {', '.join(sorted(KINDS))}"
        )
    return KINDS[key]


class FleetClient:
    def __init__(self, server: str, token: str | None, *, timeout: float = 30.0) -> None:
        self.server = server.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.server, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> FleetClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: dict[str, str] | None = None,
    ) -> Any:
        try:
            response = self._http.request(
                method, f"/api/v1/{path}", json=body, params=params or None
            )
        except httpx.HTTPError as exc:
            raise errors.FleetUnavailableError(
                f"fleet server {self.server}: {exc}",
                hint="is atoll fleet serve running there? (--server or ATOLL_FLEET_SERVER)",
            ) from None
        if response.status_code == 204:
            return None
        try:
            data = response.json()
        except ValueError:
            data = None
        if response.is_success:
            return data
        message = data.get("error") if isinstance(data, dict) else None
        cls = _BY_STATUS.get(response.status_code, errors.AtollError)
        raise cls(
            f"fleet server: {message or f'HTTP {response.status_code}'}",
        )

    def list(self, kind: str, selector: str = "") -> Any:
        collection = kind_of(kind)
        params = {"selector": selector} if selector and collection == "devices" else None
        return self.call("GET", collection, params=params)

    def get(self, kind: str, name: str) -> Any:
        return self.call("GET", f"{kind_of(kind)}/{name}")

    def put(self, kind: str, name: str, spec: Any) -> Any:
        collection = kind_of(kind)
        if collection == "devices":
            return self.call("PUT", f"devices/{name}/labels", body=spec)
        if collection not in ("fleets", "channels", "rollouts"):
            raise errors.FleetSpecError(f"a {kind} cannot be applied")
        return self.call("PUT", f"{collection}/{name}", body=spec)

    def delete(self, kind: str, name: str) -> None:
        collection = kind_of(kind)
        if collection not in ("fleets", "channels", "devices"):
            raise errors.UsageError(f"a {kind} cannot be deleted")
        self.call("DELETE", f"{collection}/{name}")
