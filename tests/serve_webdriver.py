"""Headless Chromium driven through chromedriver's W3C WebDriver HTTP API with httpx (no selenium download)."""

import base64
import subprocess
import time

import httpx

from .serve_helpers import free_port

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
ELEMENT = "element-6066-11e4-a52e-4f735466cecf"  # the W3C key of an element reference
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1100,800",
]


class WebDriverError(RuntimeError):
    pass


class Browser:
    def __init__(self, user_data_dir, timeout: float = 60.0):
        port = free_port()
        self.driver = subprocess.Popen(
            [CHROMEDRIVER, f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.base = f"http://127.0.0.1:{port}"
        self.client = httpx.Client(timeout=timeout)
        self.session = None
        try:
            self._wait_ready(timeout)
            options = {"binary": CHROMIUM, "args": [*FLAGS, f"--user-data-dir={user_data_dir}"]}
            caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": options}}}
            self.session = self._call("POST", "/session", caps)["sessionId"]
        except Exception:
            self.quit()
            raise

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.client.get(f"{self.base}/status").json()["value"]["ready"]:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise TimeoutError("chromedriver did not start")

    def _call(self, method: str, path: str, body: dict | None = None):
        response = self.client.request(method, f"{self.base}{path}", json=body if method == "POST" else None)
        value = response.json()["value"]
        if response.status_code != 200:
            raise WebDriverError(f"{value.get('error')}: {value.get('message', '')[:300]}")
        return value

    def cmd(self, method: str, path: str, body: dict | None = None):
        return self._call(method, f"/session/{self.session}{path}", body if body is not None else {})

    def open(self, url: str) -> None:
        self.cmd("POST", "/url", {"url": url})

    def run(self, script: str, *args):
        """Run JavaScript in the page (`return ...` gives its value back)."""
        return self.cmd("POST", "/execute/sync", {"script": script, "args": list(args)})

    def element(self, css: str) -> str:
        return self.cmd("POST", "/element", {"using": "css selector", "value": css})[ELEMENT]

    def click(self, css: str) -> None:
        self.cmd("POST", f"/element/{self.element(css)}/click")

    def type(self, css: str, text: str) -> None:
        self.cmd("POST", f"/element/{self.element(css)}/value", {"text": text})

    def wait(self, script: str, timeout: float = 30.0, *args):
        """Poll a JavaScript condition until it returns something truthy; that value."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.run(script, *args)
            if value:
                return value
            time.sleep(0.05)
        raise TimeoutError(f"page condition not met in {timeout}s: {script}")

    def has_alert(self) -> bool:
        try:
            self.cmd("GET", "/alert/text")
            return True
        except WebDriverError:
            return False

    def resize(self, width: int, height: int) -> None:
        self.cmd("POST", "/window/rect", {"width": width, "height": height})

    def screenshot(self, path) -> None:
        path.write_bytes(base64.b64decode(self.cmd("GET", "/screenshot")))

    def quit(self) -> None:
        try:
            if self.session:
                self.client.delete(f"{self.base}/session/{self.session}")
        except httpx.HTTPError:
            pass
        finally:
            self.client.close()
            self.driver.terminate()
            try:
                self.driver.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.driver.kill()
                self.driver.wait(timeout=10)
