"""report.html of `thumbsae rank`: escaped, self-contained, and checked in headless Chromium."""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from PIL import Image

from thumbsae.report.rank_report import write_rank_report

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium not installed (Debian: apt-get install chromium)"
)

HOSTILE = '<script>alert("x")</script> & "quotes"'


class Chromium:
    """A minimal DevTools-protocol client over `--remote-debugging-pipe` (fd 3 in, fd 4 out)."""

    def __init__(self, profile: Path):
        cmd_read, self._cmd_write = os.pipe()
        self._out_read, out_write = os.pipe()
        flags = [
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run",
            "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--remote-debugging-pipe",
            "about:blank",
        ]
        # bash puts the pipe ends on the fd numbers Chromium expects.
        self.proc = subprocess.Popen(
            ["bash", "-c", f'exec "$0" "$@" 3<&{cmd_read} 4>&{out_write}', CHROMIUM, *flags],
            pass_fds=(cmd_read, out_write), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        os.close(cmd_read)
        os.close(out_write)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []

    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("Chromium did not answer in time")
            ready, _, _ = select.select([self._out_read], [], [], remaining)
            if ready:
                chunk = os.read(self._out_read, 1 << 16)
                if not chunk:
                    raise RuntimeError("Chromium closed its DevTools pipe")
                self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._cmd_write, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        for event in self.events:
            if event.get("method") == method:
                return event
        while True:
            event = self._read_message(deadline)
            self.events.append(event)
            if event.get("method") == method:
                return event

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=5)
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._cmd_write)
        os.close(self._out_read)


def load_page(report: Path, profile: Path, expression: str) -> tuple[object, list[str]]:
    """Open `report` in headless Chromium; return (value of `expression` after load, errors).

    errors: uncaught exceptions, console errors and browser log errors (e.g. a missing image).
    """
    browser = Chromium(profile)
    try:
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            browser.send(f"{domain}.enable", session=session)
        browser.send("Page.navigate", {"url": report.resolve().as_uri()}, session=session)
        browser.wait_for("Page.loadEventFired")
        result = browser.send(
            "Runtime.evaluate", {"expression": expression, "returnByValue": True}, session=session
        )
        errors = []
        for event in browser.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                errors.append(json.dumps(params.get("exceptionDetails", {}))[:300])
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                errors.append(json.dumps(params.get("args", []))[:300])
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                errors.append(params["entry"].get("text", "")[:300])
        return result.get("result", {}).get("value"), errors
    finally:
        browser.close()


PAGE_FACTS = """({
  ranks: [...document.querySelectorAll('#ranking [data-rank]')].map(e => Number(e.dataset.rank)),
  scores: [...document.querySelectorAll('#ranking [data-rank]')].map(e => Number(e.dataset.score)),
  broken: [...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.getAttribute('src')),
  images: document.images.length,
  scripts: document.scripts.length,
  external: [...document.querySelectorAll('[src],[href]')].map(e => e.getAttribute('src') || e.getAttribute('href')).filter(u => /^[a-z]+:/i.test(u)),
  text: document.body.innerText,
  why: !!document.querySelector('#why-first'),
})"""


def fake_ranking(out: Path, n: int = 3) -> list[dict]:
    """Records shaped like `ranking.json`, with their stills and example images under `out`."""
    (out / "stills").mkdir(parents=True)
    (out / "examples").mkdir()
    Image.new("RGB", (40, 30), (200, 100, 50)).save(out / "examples" / "f7_0.jpg")
    Image.new("RGB", (40, 30), (20, 100, 150)).save(out / "examples" / "f3 odd name.png")
    records = []
    for rank in range(1, n + 1):
        Image.new("RGB", (64, 36), (rank * 60, 80, 120)).save(out / "stills" / f"rank{rank:02d}.jpg")
        records.append({
            "rank": rank, "time_s": 1.5 * rank, "timecode": f"0:0{rank}.50", "source": f"video #{rank}",
            "image": str(out / "stills" / f"rank{rank:02d}.jpg"), "image_file": f"stills/rank{rank:02d}.jpg",
            "frame_index": 10 * rank, "shot_index": rank, "quality": 0.5, "score": 1.0 - rank,
            "score_lo": 0.5 - rank, "score_hi": 1.5 - rank, "interval": 0.8, "score_kind": "channel_relative",
            "features": [
                {"feature": 7, "contribution": 0.4 / rank, "direction": "up", "name": HOSTILE,
                 "examples": ["examples/f7_0.jpg"]},
                {"feature": 3, "contribution": -0.2, "direction": "down", "name": None,
                 "examples": ["examples/f3 odd name.png"]},
            ],
        })
    return records


def test_report_escapes_text_and_links_only_local_files(tmp_path):
    records = fake_ranking(tmp_path)
    comparison = {"better": records[0], "worse": records[1], "score_gap": 1.0,
                  "reasons": [{"feature": 7, "difference": 0.2, "better": 0.4, "worse": 0.2, "name": HOSTILE}]}
    path = write_rank_report(tmp_path, records, source_name="my <video>.mp4", channel_id='chan"1',
                             comparison=comparison)
    page = path.read_text()
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "my &lt;video&gt;.mp4" in page and "chan&quot;1" in page
    assert "http://" not in page and "https://" not in page
    assert page.index('data-rank="1"') < page.index('data-rank="2"') < page.index('data-rank="3"')
    assert 'src="examples/f3%20odd%20name.png"' in page


@needs_chromium
def test_report_loads_in_chromium_in_ranked_order(tmp_path):
    out = tmp_path / "out"
    records = fake_ranking(out)
    comparison = {"better": records[0], "worse": records[1], "score_gap": 1.0, "reasons": []}
    report = write_rank_report(out, records, source_name="v.mp4", comparison=comparison)
    facts, errors = load_page(report, tmp_path / "profile", PAGE_FACTS)
    assert errors == []
    assert facts["ranks"] == [1, 2, 3]
    assert facts["scores"] == sorted(facts["scores"], reverse=True)
    assert facts["broken"] == [] and facts["images"] >= 3 + 2 * 3
    assert facts["scripts"] == 0 and facts["external"] == []
    assert HOSTILE in facts["text"]  # shown as text, not run
    assert facts["why"]


@needs_chromium
def test_chromium_check_sees_a_missing_image(tmp_path):
    # The browser check itself must be able to fail: a report whose still is gone.
    out = tmp_path / "out"
    records = fake_ranking(out, n=2)
    (out / "stills" / "rank02.jpg").unlink()
    report = write_rank_report(out, records, source_name="v.mp4")
    facts, errors = load_page(report, tmp_path / "profile", PAGE_FACTS)
    assert facts["broken"] == ["stills/rank02.jpg"]
    assert any("rank02" in e or "ERR_FILE_NOT_FOUND" in e for e in errors)
