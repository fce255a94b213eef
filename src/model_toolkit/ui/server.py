"""Serving `mtk ui`: gradio's app behind a check of every request's Host header.

A page on any web site can make the browser send requests to 127.0.0.1, and by DNS rebinding
(evil.example first resolving to the attacker, then to 127.0.0.1) even read the answers, with
`Host: evil.example:PORT`. The UI loads and overwrites model files, so it answers only
requests addressed to it by the name it was started on: 127.0.0.1, localhost or [::1] for a
loopback address, the given name or address otherwise, and any IP literal when it listens on
every interface (0.0.0.0, ::). A rebinding attack can only send a name, never a literal.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable
from typing import Any

LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}
WILDCARDS = {"0.0.0.0", "::", ""}


def allowed_host(header: str, bound: str, port: int) -> bool:
    """Whether a Host header names this server (bound to `bound`, listening on `port`)."""
    header = header.strip().lower()
    if header.startswith("["):  # [v6]:port
        name, _, rest = header[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        name, _, port_text = header.partition(":")
    if port_text != str(port) and not (port_text == "" and port == 80):
        return False
    bound = bound.strip("[]").lower()
    try:
        literal = ipaddress.ip_address(name)
    except ValueError:
        literal = None
    if bound in WILDCARDS:
        return literal is not None or name == "localhost"
    if bound in LOOPBACK_NAMES or _is_loopback(bound):
        return name == "localhost" or (literal is not None and literal.is_loopback)
    return name == bound


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


class HostCheck:
    """ASGI middleware: requests (and websockets) for any other Host get 403 and no work."""

    def __init__(self, app: Any, bound: str, port: int) -> None:
        self.app, self.bound, self.port = app, bound, port

    async def __call__(
        self, scope: dict[str, Any], receive: Callable[[], Awaitable[Any]], send: Any
    ) -> None:
        if scope["type"] in ("http", "websocket"):
            headers = dict(scope.get("headers") or [])
            host = headers.get(b"host", b"").decode("latin-1")
            if not allowed_host(host, self.bound, self.port):
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                    return
                body = f"Host {host!r} is not this server; use http://127.0.0.1:{self.port}"
                await send(
                    {
                        "type": "http.response.start",
                        "status": 403,
                        "headers": [(b"content-type", b"text/plain; charset=utf-8")],
                    }
                )
                await send({"type": "http.response.body", "body": body.encode()})
                return
        await self.app(scope, receive, send)


def serve(blocks: Any, host: str, port: int) -> None:
    """Run the page with uvicorn (gradio's own server), every request host-checked."""
    import gradio as gr
    import uvicorn
    from fastapi import FastAPI

    try:
        app = gr.mount_gradio_app(FastAPI(), blocks, path="", show_error=False)
    except TypeError:  # gradio 3.x: no show_error (errors are our own messages anyway)
        app = gr.mount_gradio_app(FastAPI(), blocks, path="")
    uvicorn.run(HostCheck(app, host, port), host=host, port=port, log_level="warning")
