"""The HTML report: its content (tables, escaping, worst-first gallery, local links) and how it renders in Chromium."""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import shutil
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import imageio.v3 as iio
import numpy as np
import pytest

from worlddrive.eval.report import write_report

POLICIES = ("expert", "wm", "action_only", "constant-velocity", "idm")
FAMILIES = ("straight", "intersection_light", "crosswalk", "cut_in", "yellow_dilemma", "occluded_ped", "urban_mixed")
HELDOUT = "heldout_city"
EVIL = "<script>alert('x')</script> & \"quoted\""
CHROMIUM = shutil.which("chromium")
ASSETS_LEFTOVER = "report_assets/data_scaling.png"


def _gif(path: Path, hue: int) -> None:
    """A real, tiny animated GIF: the browser test needs something it can decode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = np.zeros((4, 48, 64, 3), np.uint8)
    for t in range(4):
        frames[t, :, :, hue % 3] = 60 + 40 * t
        frames[t, 20:28, 8 + 12 * t : 20 + 12 * t] = 255
    iio.imwrite(path, frames, extension=".gif", duration=100, loop=0)


def fake_eval_dir(root: Path, *, optional: bool = True) -> Path:
    """An evaluation folder as `worlddrive eval` writes it, with fake numbers; `optional=False` leaves out every
    optional part (open-loop metrics, gallery, episodes.jsonl)."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    skill = dict(zip(POLICIES, (0.99, 0.985, 0.95, 0.6, 0.85), strict=True))
    policies = {}
    for name, level in skill.items():
        rows = []
        for fam in (*FAMILIES, HELDOUT):
            sub = {
                k: float(np.clip(level + rng.normal(0, 0.03), 0, 1)) for k in ("nc", "dac", "tlc", "yc", "ttc", "ep")
            }
            sub |= {"c": float(rng.uniform(0.8, 1)), "sl": float(rng.uniform(0.9, 1))}
            ds = sub["nc"] * sub["dac"] * sub["tlc"] * sub["yc"]
            ds *= (5 * sub["ttc"] + 5 * sub["ep"] + 2 * sub["c"] + 2 * sub["sl"]) / 14
            coll = int(rng.integers(0, 4)) if name != "expert" else 0
            km = float(rng.uniform(1.5, 3))
            rows.append(
                {"family": fam, "episodes": 20, "errors": int(name == "idm" and fam == "cut_in"), "ds": ds, **sub,
                 "collisions_at_fault": coll, "collisions_at_fault_per_km": coll / km, "red_lights_per_km": 0.1,
                 "route_completion": float(rng.uniform(0.8, 1)), "km": km}
            )  # fmt: skip
        ds = float(np.mean([r["ds"] for r in rows[:-1]]))
        policies[name] = {
            "ds": ds,
            "ds_ratio": None,
            "heldout_layout_ds": rows[-1]["ds"],
            "collisions": float(sum(r["collisions_at_fault"] for r in rows) / 160 * 100),
            "route_completion": float(np.mean([r["route_completion"] for r in rows])),
            "episodes": 160,
            "errors": sum(r["errors"] for r in rows),
            "families": rows,
        }
    for p in policies.values():
        p["ds_ratio"] = p["ds"] / policies["expert"]["ds"] if p is not policies["expert"] else None
    summary = {"seeds": [1000, 1019], "families": list(FAMILIES), "heldout_family": HELDOUT, "policies": policies}
    policies["idm"]["open_loop"] = None  # "not measured" may also be written as null
    if optional:
        for name in ("wm", "action_only"):
            policies[name]["open_loop"] = {"ade": 0.61, "fde": 1.42, "plan_collision_rate": 0.031}
        policies["wm"]["open_loop"] |= {"frame_psnr": 24.3, "bev_iou_true_plan": 0.58, "light_acc_1s": 0.93}
        policies["wm"]["open_loop"]["fact_acc"] = 0.81
        shown = [
            ("wm", "cut_in", 1003, 0.12, [{"t": 4.2, "what": "collision_at_fault"}], EVIL, None),
            (
                "idm",
                "cut_in",
                1007,
                0.0,
                [],
                None,
                "Traceback (most recent call last):\nRuntimeError: policy <exploded>",
            ),
            ("action_only", "occluded_ped", 1001, 0.31, [{"t": 2.5, "what": "ped_yield"}], "Pedestrian ahead.", None),
            ("wm", "yellow_dilemma", 1004, 0.55, [{"t": 3.1, "what": "red_light"}], "Light turns yellow; stop.", None),
            ("expert", "urban_mixed", 1002, 0.97, [], None, None),
        ]
        summary["gallery"] = []
        for i, (pol, fam, seed, ds, inf, why, err) in enumerate(shown):
            gif = f"gifs/{pol} {fam}_{seed}.gif"  # a space: links must be URL-quoted
            _gif(root / gif, i)
            summary["gallery"].append(
                {"policy": pol, "family": fam, "seed": seed, "ds": ds, "gif": gif, "infractions": inf,
                 "reasoning": why, "error": err}
            )  # fmt: skip
        _gif(root.parent / "outside.gif", 0)
        summary["gallery"] += [
            {"policy": "wm", "family": "straight", "seed": 1009, "ds": 0.8, "gif": "gifs/never_written.gif",
             "infractions": [], "reasoning": None, "error": None},
            {"policy": "wm", "family": "straight", "seed": 1010, "ds": 0.9, "gif": "../outside.gif",
             "infractions": [], "reasoning": None, "error": None},
            {"policy": "wm", "family": "straight", "seed": 1011, "ds": 0.95, "gif": None,
             "infractions": [], "reasoning": None, "error": None},
        ]  # fmt: skip
        with open(root / "episodes.jsonl", "w") as fh:
            fh.write(json.dumps({"policy": "wm", "family": "cut_in", "seed": 1003, "score_ds": 0.12, "error": None}))
    (root / "summary.json").write_text(json.dumps(summary))
    return root


def fake_ablation(path: Path) -> Path:
    rng = np.random.default_rng(1)
    base = {"action_only": 0.70, "vq": 0.74, "frame": 0.76, "bev": 0.80, "all": 0.83}
    rows = [
        {"variant": v, "fraction": f, "seed": s, "ds": b - 0.1 * (1 - f) + rng.normal(0, 0.02),
         "heldout_ds": b - 0.08 - 0.1 * (1 - f) + rng.normal(0, 0.03), "ade": 1.2 - 0.4 * f, "collisions": 8 - 4 * f}
        for v, b in base.items() for f in (0.25, 0.5, 1.0) for s in range(3)
    ]  # fmt: skip
    gains = [
        {"variant": "bev", "fraction": f, "against": a, "gain": g, "low": g - 0.05, "high": g + 0.04,
         "per_seed": [g - 0.01, g, g + 0.01], "episodes": 80}
        for f, a, g in ((0.25, 0.25, 0.1), (0.25, 1.0, -0.0321), (1.0, 1.0, 0.1))
    ]  # fmt: skip
    cmd = "worlddrive experiment ablation --seeds 3 && echo '<ok>'"
    path.write_text(json.dumps({"command": cmd, "rows": rows, "gains": gains}))
    return path


class _Page(HTMLParser):
    """Every tag with its attributes, and the number of body rows of each table, by class."""

    def __init__(self, text: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.rows: dict[str, int] = {}
        self._table = ""
        self._in_body = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if tag == "table":
            self._table = attrs.get("class", "")
            self.rows[self._table] = 0
        elif tag == "tbody":
            self._in_body = True
        elif tag == "thead":
            self._in_body = False
        elif tag == "tr" and self._in_body:
            self.rows[self._table] += 1

    def links(self) -> list[str]:
        return [a[k] for t, a in self.tags for k in ("src", "href") if k in a]


def _assert_links_local(eval_dir: Path, links: list[str]) -> None:
    root = eval_dir.resolve()
    for link in links:
        parts = urlsplit(link)
        assert not parts.scheme and not parts.netloc and not link.startswith("/"), link
        target = (root / unquote(parts.path)).resolve()
        assert target.is_relative_to(root) and target.is_file(), link


def test_report_content(tmp_path):
    eval_dir = fake_eval_dir(tmp_path / "eval")
    out = write_report(eval_dir, fake_ablation(tmp_path / "ablation.json"))
    assert out == eval_dir / "report.html"
    text = out.read_text()
    page = _Page(text)

    assert page.rows == {"summary": len(POLICIES), "families": len(POLICIES) * 8, "ablation": 5 * 3, "gains": 3}
    assert "<td>-0.032</td><td>[-0.082, +0.008]</td><td>-0.042, -0.032, -0.022</td><td>80</td>" in text
    summary = json.loads((eval_dir / "summary.json").read_text())
    for name, p in summary["policies"].items():
        row = re.search(rf"</span>{re.escape(name)}</td>(.*?)</tr>", text, re.S).group(1)
        assert f"{p['ds']:.3f}" in row and f"{p['heldout_layout_ds']:.3f}" in row
    assert "ADE m" in text and "PSNR dB" in text and "0.610" in text  # open-loop columns appear when present
    assert "held-out layout" in text and "reference" in text

    # Untrusted text is escaped, and the page runs no script at all.
    assert (
        "<script" not in text and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &quot;quoted&quot;" in text
    )
    assert "policy &lt;exploded&gt;" in text and "&lt;ok&gt;" in text

    # Worst episodes first; a missing GIF or one outside the folder is not linked.
    shown = [float(d) for d in re.findall(r'class="ds"[^>]*>DS ([0-9.]+)<', text)]
    assert shown == sorted(shown) and shown[0] == 0.0 and len(shown) == 8
    assert "GIF not in this folder: gifs/never_written.gif" in text and "GIF not in this folder: ../outside.gif" in text
    assert "no GIF recorded" in text
    assert "gifs/wm%20cut_in_1003.gif" in text

    imgs = [a["src"] for t, a in page.tags if t == "img"]
    assert imgs[:2] == ["report_assets/family_ds.png", "report_assets/data_scaling.png"] and len(imgs) == 2 + 5
    _assert_links_local(eval_dir, page.links())
    assert not any(t in ("script", "link", "iframe") for t, _ in page.tags)


def test_report_without_optional_parts(tmp_path):
    """No gallery, no open-loop metrics, no ablation, no episodes file: those sections are absent, not empty."""
    eval_dir = fake_eval_dir(tmp_path / "eval", optional=False)
    (eval_dir / ASSETS_LEFTOVER).parent.mkdir(parents=True)
    (eval_dir / ASSETS_LEFTOVER).write_bytes(b"old")
    text = write_report(eval_dir).read_text()
    page = _Page(text)
    assert page.rows == {"summary": len(POLICIES), "families": len(POLICIES) * 8}
    assert "Rollouts" not in text and "Data scaling" not in text and "open loop" not in text
    assert "episodes.jsonl" not in text and "—×" not in text
    assert [a["src"] for t, a in page.tags if t == "img"] == ["report_assets/family_ds.png"]
    assert not (eval_dir / ASSETS_LEFTOVER).exists()  # plots of an earlier report do not linger
    _assert_links_local(eval_dir, page.links())


class Chromium:
    """Headless Chromium driven over the DevTools pipe (JSON messages separated by NUL on fds 3 and 4): no driver
    binary to keep in step with the browser, no Python package."""

    def __init__(self, workdir: Path, timeout: float = 60.0):
        self.timeout = timeout
        to_chrome, self._send = os.pipe()
        self._recv, from_chrome = os.pipe()
        # Chromium reads fd 3 and writes fd 4: lift both ends above 10 first so the two dup2 cannot clobber each other.
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (to_chrome, from_chrome)]
        for fd in (to_chrome, from_chrome):
            os.close(fd)
        self.log = workdir / "chromium.log"
        args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                f"--user-data-dir={workdir / 'profile'}", "--window-size=1280,900", "about:blank"]  # fmt: skip
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                close_fds=False,  # the pipes are the only inheritable fds: dup2 clears close-on-exec on 3 and 4 alone
                preexec_fn=lambda: (os.dup2(high[0], 3), os.dup2(high[1], 4)),
            )
        for fd in high:
            os.close(fd)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable", session=self.session)

    def _message(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._recv], [], [], max(0.0, deadline - time.monotonic()))
            chunk = os.read(self._recv, 1 << 16) if ready else None
            if not chunk:
                why = "timed out" if chunk is None else f"exited ({self.proc.poll()})"
                raise RuntimeError(f"chromium {why}; its log:\n{self.log.read_text(errors='replace')[-3000:]}")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._next_id += 1
        msg = {"id": self._next_id, "method": method, "params": params or {}} | (
            {"sessionId": session} if session else {}
        )
        os.write(self._send, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._message(deadline)
            if reply.get("id") != self._next_id:
                self.events.append(reply)
            elif "error" in reply:
                raise RuntimeError(f"{method}: {reply['error']}")
            else:
                return reply["result"]

    def open(self, url: str) -> dict:
        """Load a page to its load event (all images fetched or failed); what rendered, and every console error."""
        self.events.clear()
        nav = self.call("Page.navigate", {"url": url}, self.session)
        assert "errorText" not in nav, nav
        deadline = time.monotonic() + self.timeout
        while not any(e.get("method") == "Page.loadEventFired" for e in self.events):
            self.events.append(self._message(deadline))
        probe = """({
          images: Array.from(document.images, i => ({src: i.getAttribute("src"), width: i.naturalWidth})),
          tables: Array.from(document.querySelectorAll("table"), t => ({
            cls: t.className, rows: t.tBodies.length ? t.querySelectorAll("tbody tr").length : 0,
            height: t.getBoundingClientRect().height})),
        })"""
        result = self.call("Runtime.evaluate", {"expression": probe, "returnByValue": True}, self.session)
        errors = []
        for e in self.events:
            method, params = e.get("method"), e.get("params", {})
            if method == "Log.entryAdded" and params["entry"]["level"] == "error":
                errors.append(params["entry"])
            elif method == "Runtime.exceptionThrown" or (
                method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert")
            ):
                errors.append(params)
        return result["result"]["value"] | {"errors": errors}

    def close(self) -> None:
        try:
            self.call("Browser.close")
            self.proc.wait(timeout=10)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            os.close(self._send)
            os.close(self._recv)


def _broken_images(seen: dict) -> list:
    return [i for i in seen["images"] if i["width"] <= 0]


@pytest.mark.slow
@pytest.mark.skipif(
    CHROMIUM is None, reason="Debian chromium is not installed (apt-get install chromium; .ci/run does)"
)
def test_report_renders_in_chromium(tmp_path):
    eval_dir = fake_eval_dir(tmp_path / "eval")
    report = write_report(eval_dir, fake_ablation(tmp_path / "ablation.json"))
    page = _Page(report.read_text())
    browser = Chromium(tmp_path)
    try:
        seen = browser.open(report.as_uri())
        assert len(seen["images"]) == sum(t == "img" for t, _ in page.tags) == 7
        assert not _broken_images(seen), seen["images"]
        assert [t["cls"] for t in seen["tables"]] == ["summary", "families", "ablation", "gains"]
        assert all(t["rows"] == page.rows[t["cls"]] and t["height"] > 20 * t["rows"] for t in seen["tables"])
        assert not seen["errors"], seen["errors"]

        # The check can fail: the same page with one image path broken is caught twice over.
        broken = eval_dir / "broken.html"
        broken.write_text(
            report.read_text().replace('src="report_assets/family_ds.png"', 'src="report_assets/nope.png"')
        )
        seen = browser.open(broken.as_uri())
        assert [i["src"] for i in _broken_images(seen)] == ["report_assets/nope.png"]
        assert any("ERR_FILE_NOT_FOUND" in e.get("text", "") for e in seen["errors"]), seen["errors"]
    finally:
        browser.close()
