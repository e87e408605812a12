"""The dashboard's files: `/` is the page, `/feed-client.js` the JavaScript client module,
`/web/{name}` the page's other files, and nothing else of the package can be reached."""

from __future__ import annotations

import asyncio

import pytest

from feed.static import WEB
from tests.conftest import Feed, StartFeed


async def raw_get(feed: Feed, target: str) -> tuple[int, bytes]:
    """GET `target` sent byte for byte as given (no client normalizing `..` or `%2e`)."""
    assert feed.server.port is not None
    reader, writer = await asyncio.open_connection(feed.server.host, feed.server.port)
    try:
        writer.write(f"GET {target} HTTP/1.1\r\nHost: feed\r\nConnection: close\r\n\r\n".encode())
        answer = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def test_the_root_is_the_page(start_feed: StartFeed) -> None:
    feed = await start_feed()
    async with feed.client.get("/") as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/html; charset=utf-8"
        assert response.headers["Cache-Control"] == "no-cache"
        page = await response.text()
    assert page.lower().startswith("<!doctype html>")
    assert page.encode() == (WEB / "index.html").read_bytes()


async def test_the_client_module_is_served_as_javascript(start_feed: StartFeed) -> None:
    feed = await start_feed()
    source = (WEB / "feed-client.js").read_bytes()
    for path in ("/feed-client.js", "/web/feed-client.js"):
        async with feed.client.get(path) as response:
            assert response.status == 200
            assert response.headers["Content-Type"] == "text/javascript; charset=utf-8"
            assert response.headers["Cache-Control"] == "no-cache"
            assert response.headers["X-Content-Type-Options"] == "nosniff"
            assert await response.read() == source
            etag = response.headers["ETag"]
    assert b"export class FeedClient" in source
    # no-cache means "revalidate": an unchanged file costs a 304 and no body.
    async with feed.client.get("/feed-client.js", headers={"If-None-Match": etag}) as response:
        assert response.status == 304


@pytest.mark.parametrize(
    "target",
    [
        "/web/../server.py",
        "/web/%2e%2e/server.py",
        "/web/..%2fserver.py",
        "/web/%2E%2E%2Fserver.py",
        "/web/..%5cserver.py",
        "/web/%2fetc%2fpasswd",
        "/../feed/server.py",
    ],
)
async def test_no_path_leaves_the_page_directory(start_feed: StartFeed, target: str) -> None:
    feed = await start_feed()
    status, body = await raw_get(feed, target)
    assert status == 404, (target, body[:200])
    assert b"import" not in body and b"root:" not in body


@pytest.mark.parametrize("path", ["/web/nope.js", "/web/", "/web", "/web/package.json", "/x.js"])
async def test_unknown_files_and_listings_are_not_found(start_feed: StartFeed, path: str) -> None:
    feed = await start_feed()
    async with feed.client.get(path) as response:
        assert response.status == 404, path
        assert "index.html" not in await response.text()  # no listing
