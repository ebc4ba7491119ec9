"""ASGI middleware, run before a request body is read: the API key, the body-size limit, and the HTTP request
count for /metrics."""

import secrets

from .errors import APIError

# Everything that needs the key when one is set: the API, the metrics, and the API's own description (it names the
# routes and, through /v1/models, the models). The chat page and /health stay open.
PROTECTED = ("/v1/", "/metrics", "/docs", "/redoc", "/openapi.json")


class APIKeyCheck:
    """Protected paths need `Authorization: Bearer KEY`; a request without it gets 401 whatever its body holds."""

    def __init__(self, app, api_key: str):
        self.app, self.expected = app, f"Bearer {api_key}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith(PROTECTED):
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not secrets.compare_digest(given, self.expected):
                message = (
                    "Incorrect API key provided." if given else "Missing API key: send 'Authorization: Bearer KEY'."
                )
                error = APIError(401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
                await error.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)


class BodyLimit:
    """A request body above `max_bytes` is a 413, found from Content-Length or while it arrives (the body is read
    here, up to the limit, and handed on whole), so no handler ever parses a multi-megabyte prompt."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            more = message.get("more_body", False)
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope, receive, send):
        message = f"The request body is larger than this server's limit of {self.max_bytes} bytes."
        await APIError(413, message, code="request_too_large").response()(scope, receive, send)


class CountRequests:
    """Counts every HTTP response by route and status for /metrics."""

    def __init__(self, app, metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def counted(message):
            if message["type"] == "http.response.start":
                self.metrics.http.labels(self.metrics.route(scope["path"]), str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, counted)
