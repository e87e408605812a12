"""The browser dashboard's files (`feed/web/`), served by every process that serves `/ws`.

`GET /` is the page (`web/index.html`), `GET /feed-client.js` the JavaScript client module,
and `GET /web/{name}` any other file of the page (its script, its style sheet). Only plain
file names directly in `web/` with a known extension are served, so nothing else of the
package (no `..`, no subdirectory, no hidden file, no listing) can be reached. Every answer
says `Cache-Control: no-cache`: a browser revalidates (a cheap 304 while the file is
unchanged) and so picks up a restarted server's new files.
"""

from __future__ import annotations

import re
from pathlib import Path

from aiohttp import web

WEB = Path(__file__).resolve().parent / "web"
"""The page's directory, shipped as package data."""

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}
"""The kinds of file served, by extension; a file of any other kind is not found."""

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def routes() -> list[web.RouteDef]:
    """`/`, `/feed-client.js` and `/web/{name}` (GET, and HEAD)."""
    return [
        web.get("/", _index),
        web.get("/feed-client.js", _client),
        web.get("/web/{name}", _file),
    ]


def file_response(name: str) -> web.FileResponse:
    """The file `name` of `web/` with its content type and `no-cache`; 404 when `name` is not
    a plain file name of a served kind, or no such file exists."""
    content_type = CONTENT_TYPES.get(Path(name).suffix)
    path = WEB / name
    if content_type is None or not _NAME.fullmatch(name) or not path.is_file():
        raise web.HTTPNotFound(text=f"no such file: {name}")
    headers = {
        "Content-Type": content_type,
        "Cache-Control": "no-cache",
        "X-Content-Type-Options": "nosniff",
    }
    return web.FileResponse(path, headers=headers)


async def _index(request: web.Request) -> web.FileResponse:
    return file_response("index.html")


async def _client(request: web.Request) -> web.FileResponse:
    return file_response("feed-client.js")


async def _file(request: web.Request) -> web.FileResponse:
    return file_response(request.match_info["name"])
