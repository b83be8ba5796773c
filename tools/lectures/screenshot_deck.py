"""Look at a projected slide: present a deck with RISE in headless Chromium, offline, and measure it.

Starts JupyterLab on localhost, opens ``/rise/<deck>`` in Chromium at 1280x720 with every request
that does not go to localhost blocked (and listed), goes to the slides you name, and for each writes a
screenshot and the rendered text sizes: body text, inline maths, code/output text, and figure images
(their natural and displayed width, so a figure's tick labels can be converted to screen pixels).
Run from the project root after building the decks with their outputs::

    python tools/make_decks.py --lecture 1
    python tools/lectures/screenshot_deck.py build/lectures/lecture1.ipynb --out /tmp/shots \\
        --slide "Three ways to measure sharpness" --slide "The sharp minimum is lower"

A ``--slide`` is a text the slide contains (its first match). Needs Playwright (``pip install
playwright``) and a Chromium (``--chromium``, default ``/usr/bin/chromium``).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]

MEASURE = r"""
() => {
  const slide = document.querySelector('.reveal .slides section.present section.present')
             || document.querySelector('.reveal .slides section.present');
  const visible = el => { const r = el.getBoundingClientRect(); return r.width > 0 && r.height > 0 &&
                          r.bottom > 0 && r.top < window.innerHeight; };
  const px = (sel) => Array.from(slide.querySelectorAll(sel)).filter(visible)
                       .map(el => parseFloat(getComputedStyle(el).fontSize));
  const maths = Array.from(slide.querySelectorAll('mjx-container, .MathJax')).filter(visible);
  const imgs = Array.from(slide.querySelectorAll('img')).filter(visible).map(img => ({
      natural: [img.naturalWidth, img.naturalHeight], shown: [img.width, img.height]}));
  // how many monospace characters a code line and an output line can show before the right edge
  const fit = (sel) => Array.from(slide.querySelectorAll(sel)).filter(visible).map(el => {
      const cs = getComputedStyle(el);
      const ctx = document.createElement('canvas').getContext('2d');
      ctx.font = `${cs.fontSize} ${cs.fontFamily}`;
      const w = ctx.measureText('0123456789').width / 10;
      return Math.floor(Math.min(el.clientWidth, window.innerWidth - el.getBoundingClientRect().left) / w);
  });
  return {
    code_chars_fit: fit('.jp-CodeMirrorEditor .cm-content'),
    output_chars_fit: fit('.jp-OutputArea-output pre'),
    body_px: px('.jp-RenderedMarkdown p, .jp-RenderedMarkdown li'),
    heading_px: px('.jp-RenderedMarkdown h2, .jp-RenderedMarkdown h3'),
    math_px: maths.map(m => parseFloat(getComputedStyle(m).fontSize)),
    math_glyph_height_px: maths.map(m => m.getBoundingClientRect().height),
    math_count: maths.length,
    mathjax_errors: slide.querySelectorAll('mjx-merror, .MathJax_Error').length,
    output_px: px('.jp-OutputArea-output pre'),
    code_px: px('.jp-CodeMirrorEditor .cm-line'),
    images: imgs,
    overflow_right: Array.from(slide.querySelectorAll('.cm-line, pre')).filter(visible)
                      .filter(el => el.scrollWidth > el.clientWidth + 1).length,
    viewport: [window.innerWidth, window.innerHeight],
  };
}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stats(values):
    return None if not values else {"min": round(min(values), 1), "median": round(sorted(values)[len(values) // 2], 1),
                                    "max": round(max(values), 1), "n": len(values)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("deck", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--slide", action="append", default=[], help="a text the slide contains (repeatable)")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--size", default="1280x720")
    args = ap.parse_args(argv)
    from playwright.sync_api import sync_playwright

    args.out.mkdir(parents=True, exist_ok=True)
    width, height = (int(v) for v in args.size.split("x"))
    port, token = _free_port(), secrets.token_hex(16)
    deck = args.deck.resolve().relative_to(ROOT).as_posix()
    server = subprocess.Popen([sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}",
                               f"--ServerApp.token={token}", f"--ServerApp.root_dir={ROOT}", "--ServerApp.ip=127.0.0.1",
                               "--allow-root"],
                              stdout=subprocess.DEVNULL, stderr=open(args.out / "server.log", "w", encoding="utf-8"))
    report = {"deck": deck, "size": [width, height], "slides": [], "blocked": []}
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(240):
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if server.poll() is not None:
                    raise RuntimeError(f"JupyterLab stopped; see {args.out / 'server.log'}")
                time.sleep(0.5)
        else:
            raise RuntimeError("JupyterLab did not start within 2 minutes")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, args=FLAGS)
            page = browser.new_page(viewport={"width": width, "height": height})

            def route(r):
                host = r.request.url.split("/")[2].split(":")[0] if "://" in r.request.url else ""
                if r.request.url.startswith(("data:", "blob:")) or host in ("127.0.0.1", "localhost"):
                    return r.continue_()
                report["blocked"].append(r.request.url)
                return r.abort()

            page.route("**/*", route)
            page.goto(f"{base}/rise/{deck}?token={token}", wait_until="networkidle", timeout=180_000)
            page.wait_for_selector(".reveal .slides section", timeout=180_000)
            time.sleep(3)
            total = page.evaluate("() => Reveal.getTotalSlides()")
            report["total_slides"] = total
            indices = page.evaluate("""() => Reveal.getSlides().map(s => Reveal.getIndices(s))""")
            texts = page.evaluate("() => Reveal.getSlides().map(s => s.innerText.slice(0, 4000))")
            for k, wanted in enumerate(args.slide):
                hit = next((i for i, t in enumerate(texts) if wanted in t), None)
                if hit is None:
                    report["slides"].append({"wanted": wanted, "found": False})
                    continue
                idx = indices[hit]
                page.evaluate(f"() => Reveal.slide({idx['h']}, {idx.get('v') or 0}, 99)")  # all fragments shown
                time.sleep(2.5)
                shot = args.out / f"slide{k + 1}.png"
                page.screenshot(path=str(shot))
                m = page.evaluate(MEASURE)
                entry = {"wanted": wanted, "found": True, "indices": idx, "screenshot": str(shot),
                         "body_px": _stats(m["body_px"]), "heading_px": _stats(m["heading_px"]),
                         "math_px": _stats(m["math_px"]), "math_count": m["math_count"],
                         "mathjax_errors": m["mathjax_errors"], "output_px": _stats(m["output_px"]),
                         "code_px": _stats(m["code_px"]), "images": m["images"],
                         "code_chars_fit": m["code_chars_fit"], "output_chars_fit": m["output_chars_fit"],
                         "lines_cut_off": m["overflow_right"], "viewport": m["viewport"]}
                report["slides"].append(entry)
            browser.close()
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
    (args.out / "report.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
