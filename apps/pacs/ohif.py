"""Open a PACS study and its DICOM SEG in the OHIF viewer that MONAI Label serves, in headless Chromium, and save
a screenshot with the segmentation drawn over the image.

    python -m apps.pacs.ohif --server http://127.0.0.1:8000 --study <StudyInstanceUID> --output shot.png

Chromium (Debian package ``chromium``) is driven over its DevTools protocol (a websocket, ``aiohttp``) with
mouse events, as a user would: open ``<server>/ohif/viewer?StudyInstanceUIDs=<uid>``, confirm the
investigational-use banner, double-click the SEG series in the study browser, answer "Yes" to "Do you want to
open this Segmentation?", open the Segmentation panel and click a segment, which moves the viewport to that
segment's centre slice (the series opens at its first slice, outside the brain, where nothing is drawn). WebGL2
runs on SwiftShader (software; no GPU or display needed). The screenshot is saved once the segment's colour is
visible in the viewport, otherwise a ``TimeoutError`` says what the page showed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from scripts.conventions import CLASS_DESCRIPTIONS
from scripts.io import find_chromium as on_path

INSTALL_HINT = "apt-get install -y chromium"
WIDTH, HEIGHT = 1600, 900
FLAGS = (
    "--headless", "--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist",
    "--no-first-run", "--no-default-browser-check", "--disable-dev-shm-usage", "--hide-scrollbars",
    f"--window-size={WIDTH},{HEIGHT}",
)  # fmt: skip
# The centre of the smallest visible element whose text starts with the given text (null when none shows it).
FIND_TEXT = """(text) => {
  const hits = [...document.querySelectorAll('div,button,span')]
    .filter(e => e.offsetParent && e.innerText && e.innerText.trim().startsWith(text))
    .sort((a, b) => a.innerText.length - b.innerText.length);
  if (!hits.length) return null;
  const r = hits[0].getBoundingClientRect();
  return [r.x + r.width / 2, r.y + r.height / 2];
}"""
# The active viewport: slice index, its rectangle on the page, the segmentation's segments (label, colour).
VIEWPORT_STATE = """(() => {
  const vp = cornerstone.getRenderingEngines()[0].getViewports()[0];
  const r = vp.element.getBoundingClientRect();
  const seg = services.segmentationService.getSegmentations()[0];
  const segments = seg ? Object.values(seg.segments).filter(s => s).map(s =>
    [s.label, services.segmentationService.getSegmentColor(vp.id, seg.segmentationId, s.segmentIndex)]) : [];
  return {slice: vp.getCurrentImageIdIndex(), rect: [r.x, r.y, r.width, r.height], segments: segments};
})()"""


def find_chromium() -> str:
    """The Chromium executable (:func:`scripts.io.find_chromium`); ``FileNotFoundError`` naming the package to
    install."""
    exe = on_path()
    if exe is None:
        raise FileNotFoundError(f"chromium not found: install the Debian package ({INSTALL_HINT})")
    return exe


def segment_pixels(rgb: np.ndarray, colours: list, min_chroma: float = 40.0) -> list[int]:
    """Per colour, the pixels of ``rgb`` (H x W x 3) tinted with it: a label map drawn with opacity over a grey
    image leaves ``pixel - min(pixel)`` along ``colour - min(colour)``; grey pixels and other hues do not count."""
    rgb = rgb.astype(float)
    chroma = rgb - rgb.min(axis=-1, keepdims=True)
    norm = np.linalg.norm(chroma, axis=-1)
    counts = []
    for colour in colours:
        c = np.asarray(colour[:3], float)
        c = (c - c.min()) / np.linalg.norm(c - c.min())
        cosine = (chroma @ c) / np.maximum(norm, 1e-6)
        counts.append(int(((norm > min_chroma) & (cosine > 0.97)).sum()))
    return counts


class DevTools:
    """Headless Chromium with a fresh profile, one page, driven over the DevTools protocol."""

    def __init__(self, log_path: str | os.PathLike | None = None):
        self.profile = tempfile.mkdtemp(prefix="chromium-profile-")
        self.log = open(log_path or os.devnull, "w")
        cmd = [find_chromium(), *FLAGS, f"--user-data-dir={self.profile}", "--remote-debugging-port=0", "about:blank"]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.session = self.ws = None
        self.next_id = 0

    async def connect(self, timeout: float = 120) -> None:
        import aiohttp

        port_file = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while not (port_file.is_file() and port_file.read_text().strip()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"chromium did not open its DevTools port (exit code {self.proc.poll()})")
            await asyncio.sleep(0.2)
        port = port_file.read_text().split()[0]
        self.session = aiohttp.ClientSession()
        async with self.session.get(f"http://127.0.0.1:{port}/json/list") as answer:
            page = next(t for t in await answer.json() if t["type"] == "page")
        self.ws = await self.session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)
        await self.send(
            "Emulation.setDeviceMetricsOverride", width=WIDTH, height=HEIGHT, deviceScaleFactor=1, mobile=False
        )

    async def send(self, method: str, timeout: float = 120, **params):
        """One DevTools command's result; ``RuntimeError`` on its error or when the page does not answer (a
        renderer killed for memory, for one)."""
        self.next_id += 1
        await self.ws.send_json({"id": self.next_id, "method": method, "params": params})
        try:
            message = await asyncio.wait_for(self._answer(self.next_id), timeout)
        except asyncio.TimeoutError:
            raise RuntimeError(f"chromium did not answer {method} within {timeout:.0f} s") from None
        if "error" in message:
            raise RuntimeError(f"DevTools {method}: {message['error']}")
        return message["result"]

    async def _answer(self, command_id: int) -> dict:
        while True:  # events are not subscribed to; anything else is skipped
            message = await self.ws.receive_json()
            if message.get("id") == command_id:
                return message

    async def evaluate(self, expression: str):
        answer = await self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in answer:
            raise RuntimeError(
                f"page script failed: {answer['exceptionDetails'].get('exception', {}).get('description')}"
            )
        return answer["result"].get("value")

    async def click(self, x: float, y: float, count: int = 1) -> None:
        for n in range(1, count + 1):
            for kind in ("mousePressed", "mouseReleased"):
                await self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=n)

    async def screenshot(self) -> bytes:
        return base64.b64decode((await self.send("Page.captureScreenshot", format="png"))["data"])

    async def wait_for_text(self, text: str, timeout: float) -> list[float]:
        """Where the element showing ``text`` is, once it shows; ``TimeoutError`` with the page's text."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            where = await self.evaluate(f"({FIND_TEXT})({json.dumps(text)})")
            if where:
                return where
            await asyncio.sleep(1)
        page = await self.evaluate("document.body ? document.body.innerText : ''")
        raise TimeoutError(f"OHIF did not show {text!r} within {timeout:.0f} s; the page showed: {page[:600]!r}")

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        shutil.rmtree(self.profile, ignore_errors=True)


def _rgb(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def _viewport_pixels(png: bytes, state: dict) -> list[int]:
    x, y, w, h = (int(round(v)) for v in state["rect"])
    return segment_pixels(_rgb(png)[y : y + h, x : x + w], [c for _, c in state["segments"]])


async def _open_segmentation(dt: DevTools, url: str, segment: str, timeout: float, times: dict) -> dict:
    """The mouse path from the study's URL to ``segment`` shown; ``times`` gets seconds since the URL opened."""
    start = time.monotonic()
    await dt.send("Page.navigate", url=url)
    await dt.click(*await dt.wait_for_text("Confirm and Hide", timeout))
    seg = await dt.wait_for_text("SEG", timeout)
    times["seg_listed_s"] = time.monotonic() - start
    await dt.click(*seg, count=2)
    await dt.click(*await dt.wait_for_text("Yes", timeout))
    panel = "(() => {const r = document.querySelector('[data-cy=panelSegmentation-btn]').getBoundingClientRect();" \
            " return [r.x + r.width / 2, r.y + r.height / 2];})()"  # fmt: skip
    await dt.click(*await dt.evaluate(panel))
    deadline = time.monotonic() + timeout
    while True:  # the row is clickable before the SEG is loaded: click until the viewport shows the segment
        await dt.click(*await dt.wait_for_text(segment, timeout))
        await asyncio.sleep(2)
        png = await dt.screenshot()
        state = await dt.evaluate(VIEWPORT_STATE)
        labels = [label for label, _ in state["segments"]]
        pixels = _viewport_pixels(png, state)
        if segment in labels and pixels[labels.index(segment)] > 0:
            times["overlay_s"] = time.monotonic() - start
            return {**state, "png": png, "pixels": dict(zip(labels, pixels))}
        if time.monotonic() > deadline:
            raise TimeoutError(f"segment {segment!r} not drawn in the viewport within {timeout:.0f} s: {state}")


async def _show(server: str, study: str, segment: str, timeout: float, log_path) -> dict:
    dt = DevTools(log_path)
    try:
        await dt.connect()
        times: dict = {}
        shown = await _open_segmentation(dt, f"{server.rstrip('/')}/ohif/viewer?StudyInstanceUIDs={study}", segment,
                                         timeout, times)  # fmt: skip
        return {**shown, **times}
    finally:
        await dt.close()


def show_segmentation(
    server: str,
    study: str,
    output: str | os.PathLike,
    segment: str = CLASS_DESCRIPTIONS[1],
    timeout: float = 300,
    log_path: str | os.PathLike | None = None,
) -> dict:
    """Open ``study`` and its SEG in OHIF at ``server`` with ``segment`` centred, save the page as PNG at ``output``
    (written to a temporary name, then renamed). Returns ``slice``, ``rect`` (the viewport, page pixels),
    ``segments`` ([label, colour]), ``pixels`` (label: tinted pixels in the viewport), ``seg_listed_s`` and
    ``overlay_s`` (seconds from opening the URL). ``timeout`` bounds each wait."""
    shown = asyncio.run(_show(server, study, segment, timeout, log_path))
    output = Path(output)
    tmp = output.with_name(f".{output.name}.tmp")
    tmp.write_bytes(shown.pop("png"))
    os.replace(tmp, output)
    return shown


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default="http://127.0.0.1:8000", help="MONAI Label server (serves /ohif/)")
    parser.add_argument("--study", required=True, help="StudyInstanceUID of a study with a DICOM SEG in the PACS")
    parser.add_argument("--output", required=True, help="PNG to write")
    parser.add_argument("--segment", default=CLASS_DESCRIPTIONS[1], help="segment to centre (its label)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds allowed for each step")
    args = parser.parse_args(argv)
    try:
        shown = show_segmentation(args.server, args.study, args.output, args.segment, args.timeout)
    except (OSError, RuntimeError, TimeoutError) as e:
        sys.exit(f"error: {e}")
    print(json.dumps(shown, indent=1))
    return shown


if __name__ == "__main__":
    main()
