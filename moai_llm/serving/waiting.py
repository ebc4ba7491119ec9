"""The engine's waiting line: bounded (a full line is the client's 429, never unbounded memory), and the engine
can look at the next request before taking it (it is admitted only when its prompt fits this turn's budget)."""

import threading
from collections import deque


class QueueFull(Exception):
    """The waiting line is full: the server answers 429 with Retry-After."""


class EngineClosed(Exception):
    """The engine is shutting down: the server answers 503."""


class WaitingQueue:
    def __init__(self, limit: int):
        self.limit = limit
        self.items: deque = deque()
        self.ready = threading.Condition()

    def put_all(self, requests: list) -> None:
        """All or none: a request of several prompts is not half queued (it is let in while the line is below its
        limit, so the line holds at most limit - 1 + one request's prompts)."""
        with self.ready:
            if len(self.items) >= self.limit:
                raise QueueFull(f"{len(self.items)} requests are waiting (the limit is {self.limit})")
            self.items.extend(requests)
            self.ready.notify()

    def peek(self, timeout: float = 0.0):
        """The next request without taking it (None when the line stays empty for `timeout` seconds)."""
        with self.ready:
            if not self.items and timeout > 0:
                self.ready.wait(timeout)
            return self.items[0] if self.items else None

    def pop(self):
        with self.ready:
            return self.items.popleft()

    def wake(self) -> None:
        with self.ready:
            self.ready.notify_all()

    def drain(self) -> list:
        with self.ready:
            items, self.items = list(self.items), deque()
            return items

    def qsize(self) -> int:
        return len(self.items)

    def empty(self) -> bool:
        return not self.items
