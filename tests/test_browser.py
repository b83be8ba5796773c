"""The course as people meet it, in headless Chromium: live widgets in JupyterLab, and the rendered book.

* Widgets: one JupyterLab server for the module (a free local port, a token, a scratch copy of
  ``chapters/`` so nothing is saved into the checkout). Every notebook whose code calls
  ``widgets.show(...)`` is found from the sources; for each, the test runs in quick mode the cells a
  widget needs (the code cells up to the one importing ``samlib.widgets``, then each
  ``widgets.show`` cell: nbval already runs every cell, and running them all again here made this file
  the suite's longest), asserts none failed, then finds every widget on the page and every slider
  (or drop-down) of each, moves it, and asserts the widget's figure changed (its rendered image
  before and after).
* Book: ``sphinx-build -c book . OUT`` in quick mode (once for the module, in the background while
  the widget tests run), then every page is opened with all non-local requests blocked: it loads,
  its figures decode, its maths is typeset by the bundled MathJax (no raw ``$...$`` left), and it
  shows no error output.

``SAMLIB_BOOK=DIR`` checks a book already built into ``DIR/html`` instead of building one.
Screenshots go to a temporary folder whose path is printed (or to ``$SAMLIB_SCREENSHOTS``).
Chromium is Debian's ``chromium`` package (``$SAMLIB_CHROMIUM`` overrides the path); without it
the module skips, unless ``SAMLIB_REQUIRE_BROWSER=1`` (as in CI), where that is a failure.
"""
from __future__ import annotations

import contextlib
import json
import os
import pathlib
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
CHAPTERS = ROOT / "chapters"
CHROMIUM = os.environ.get("SAMLIB_CHROMIUM", "/usr/bin/chromium")
REQUIRED = os.environ.get("SAMLIB_REQUIRE_BROWSER", "") not in ("", "0")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}
SHOW = re.compile(r"""\bwidgets\.show\(\s*["'](\w+)["']""")


def _notebooks():
    return sorted(p for p in CHAPTERS.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)


def _code(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    return "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")


WIDGET_NOTEBOOKS = [p for p in _notebooks() if SHOW.search(_code(p))]


def _book_pages():
    """Every page the book must have, from the sources (so a missing page is a failure)."""
    pages = ["book/index.html", "book/references.html"]
    pages += [str(p.relative_to(ROOT).with_suffix(".html")) for p in _notebooks()]
    pages += [f"chapters/{p.stem}.html" for p in sorted(CHAPTERS.glob("*.md"))]
    return pages


# ---- browser and helpers -------------------------------------------------------------------------

def _missing_browser():
    if not os.path.exists(CHROMIUM):
        return (f"Chromium not found at {CHROMIUM}: install Debian's package (`apt-get install chromium`) "
                "or set SAMLIB_CHROMIUM to a Chromium binary")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright is not installed: `pip install -e '.[dev]'` (or `pip install playwright`)"
    return None


def _say(config, message):
    """Print past pytest's output capture (where the screenshots are, how long the book took)."""
    capture = config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print(f"\n[test_browser] {message}", flush=True)


@pytest.fixture(scope="module")
def shots(pytestconfig):
    folder = pathlib.Path(os.environ.get("SAMLIB_SCREENSHOTS") or tempfile.mkdtemp(prefix="samlib-screenshots-"))
    folder.mkdir(parents=True, exist_ok=True)
    _say(pytestconfig, f"screenshots: {folder}")
    return folder


@pytest.fixture(scope="module")
def browser():
    reason = _missing_browser()
    if reason:
        (pytest.fail if REQUIRED else pytest.skip)(reason + (" (SAMLIB_REQUIRE_BROWSER is set)" if REQUIRED else ""))
    from playwright.sync_api import sync_playwright
    with sync_playwright() as pw:
        # Playwright gives each launch a fresh temporary profile (--user-data-dir) and --headless.
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


def _offline_context(browser, blocked):
    """A browser context in which every request to another host than this machine is refused."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 900}, service_workers="block")

    def route(r):
        host = urlparse(r.request.url).hostname or ""
        if r.request.url.startswith(("data:", "blob:", "about:")) or host in LOCAL_HOSTS:
            r.continue_()
        else:
            blocked.append(r.request.url)
            r.abort()

    ctx.route("**/*", route)
    return ctx


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url, proc, log, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{proc.args[:4]} exited with {proc.returncode}:\n{log.read_text(encoding='utf-8', errors='replace')[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"{url} did not answer within {timeout} s:\n{log.read_text(encoding='utf-8', errors='replace')[-3000:]}")


def _stop(proc):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _env(**extra):
    env = dict(os.environ, SAMLIB_MODE="quick", **extra)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MKL_NUM_THREADS", "1")
    return env


# ---- the book: built once, in the background, while the widget tests run --------------------------

EXECUTED = re.compile(r"^(\S+\.ipynb): Executed notebook in ([\d.]+) seconds", re.M)


class _BookBuild:
    def __init__(self, folder: pathlib.Path):
        self.out = folder / "html"
        self.log = folder / "build.log"
        self.started = time.time()
        # "force": execute every notebook in quick mode (no cache database, so two processes can
        # read in parallel: they share the two cores with the widget tests, which run meanwhile).
        cmd = [sys.executable, "-m", "sphinx", "-j", "2", "-c", str(ROOT / "book"),   # not -q: the log times each notebook
               "-D", "nb_execution_mode=force", str(ROOT), str(self.out)]
        with open(self.log, "w", encoding="utf-8") as fh:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=fh, stderr=subprocess.STDOUT)
        self.seconds = None

    def wait(self):
        if self.seconds is None:
            try:
                self.proc.wait(timeout=900)
            except subprocess.TimeoutExpired:
                _stop(self.proc)
                pytest.fail("the book build took more than 15 minutes")
            self.seconds = time.time() - self.started
        log = self.log.read_text(encoding="utf-8", errors="replace")
        assert self.proc.returncode == 0, f"the book build failed:\n{log[-6000:]}"
        return self


class _BuiltBook:
    """A book built beforehand (``SAMLIB_BOOK=book/_build``: check a standard-mode build, say)."""
    def __init__(self, folder: pathlib.Path):
        self.out, self.proc = folder / "html", None
        assert (self.out / "book" / "index.html").exists(), f"SAMLIB_BOOK={folder}: no html/book/index.html there"

    def wait(self):
        return self


@pytest.fixture(scope="module")
def book_build(tmp_path_factory, browser):
    if os.environ.get("SAMLIB_BOOK"):
        yield _BuiltBook(pathlib.Path(os.environ["SAMLIB_BOOK"]))
        return
    build = _BookBuild(tmp_path_factory.mktemp("book"))
    yield build
    _stop(build.proc)


@pytest.fixture(scope="module")
def book(book_build, pytestconfig):
    build = book_build.wait()
    if getattr(build, "seconds", None):
        executed = sorted(((float(t), name) for name, t in EXECUTED.findall(build.log.read_text(encoding="utf-8", errors="replace"))),
                          reverse=True)
        slowest = ", ".join(f"{pathlib.Path(name).stem} {t:.0f} s" for t, name in executed[:3])
        _say(pytestconfig, f"book built (quick mode) in {build.seconds:.0f} s into {build.out}; {len(executed)} notebooks "
                           f"executed in {sum(t for t, _ in executed):.0f} s (slowest: {slowest})")
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(build.out)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield build, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


# ---- JupyterLab: one server for the module ----------------------------------------------------------

@pytest.fixture(scope="module")
def lab(tmp_path_factory, book_build):
    # book_build: the book starts building in the background before JupyterLab starts.
    tmp = tmp_path_factory.mktemp("lab")
    root = tmp / "chapters"
    shutil.copytree(CHAPTERS, root, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    settings = tmp / "settings"
    for plugin, values in {"docmanager-extension/plugin": {"autosave": False},
                           "apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False}}.items():
        f = settings / "@jupyterlab" / f"{plugin}.jupyterlab-settings"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps(values), encoding="utf-8")
    token, port = secrets.token_hex(16), _free_port()
    log = tmp / "jupyterlab.log"
    env = _env(JUPYTER_CONFIG_DIR=str(tmp / "config"), JUPYTER_RUNTIME_DIR=str(tmp / "runtime"),
               JUPYTERLAB_SETTINGS_DIR=str(settings), JUPYTERLAB_WORKSPACES_DIR=str(tmp / "workspaces"),
               IPYTHONDIR=str(tmp / "ipython"))
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ip=127.0.0.1", f"--port={port}",
           "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
           "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=None",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate", "--LabApp.extension_manager=readonly",
           "--ServerApp.terminals_enabled=False"]
    with open(log, "w", encoding="utf-8") as fh:
        proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=fh, stderr=subprocess.STDOUT)
    try:
        _wait_http(f"http://127.0.0.1:{port}/api/status?token={token}", proc, log, timeout=180)
        yield f"http://127.0.0.1:{port}", token, log
    finally:
        _stop(proc)


_PANEL = """path => {
  const app = window.jupyterapp;
  if (!app) return null;
  for (const w of app.shell.widgets('main')) {
    if (w.context && w.context.path === path && w.sessionContext) return true;
  }
  return null;
}"""

_RUN_CELLS = """async ([path, indices, seconds]) => {
  const app = window.jupyterapp;
  const panel = [...app.shell.widgets('main')].find(w => w.context && w.context.path === path);
  const timeout = new Promise(r => setTimeout(() => r('timeout'), seconds * 1000));
  const run = (async () => {
    await panel.context.ready;
    await panel.sessionContext.ready;
    app.shell.activateById(panel.id);
    for (const i of indices) {         // as a reader would: select the cell, Shift+Enter without advancing
      panel.content.activeCellIndex = i;
      panel.content.deselectAll();
      await app.commands.execute('notebook:run-cell');
    }
    const kernel = () => panel.sessionContext.session && panel.sessionContext.session.kernel;
    while (!(kernel() && kernel().status === 'idle')) await new Promise(r => setTimeout(r, 250));
    return 'done';
  })();
  const how = await Promise.race([run, timeout]);
  const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
  const cells = [...panel.content.model.cells].map((cell, i) => cell.type !== 'code' ? null :
      {index: i, count: cell.executionCount, source: cell.sharedModel.getSource().slice(0, 80),
       errors: cell.outputs.toJSON().filter(o => o.output_type === 'error').map(o => o.ename + ': ' + o.evalue)});
  return {how, status: kernel ? kernel.status : 'none', cells: cells.filter(c => c)};
}"""

IMPORTS_WIDGETS = re.compile(r"^\s*(from samlib import [^\n]*\bwidgets\b|import samlib\.widgets)", re.M)


def _widget_cells(path):
    """Indices (among all cells) of the cells a widget needs: every code cell up to the one that imports
    ``samlib.widgets``, then each cell calling ``widgets.show``."""
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    code = [(i, "".join(c["source"])) for i, c in enumerate(cells) if c["cell_type"] == "code"]
    first = next((k for k, (_, src) in enumerate(code) if IMPORTS_WIDGETS.search(src)), None)
    assert first is not None, f"{path.name}: no code cell imports samlib.widgets before calling widgets.show"
    setup = [i for i, _ in code[:first + 1]]
    return setup + [i for i, src in code[first + 1:] if SHOW.search(src)]


_FIND_WIDGETS = """() => {
  // A course widget: a top-level widget box with controls (sliders, drop-downs) and a figure.
  const CONTROLS = '.widget-slider, .widget-dropdown';
  const boxes = [...document.querySelectorAll('.jp-OutputArea-output .widget-box')].filter(b =>
      b.querySelector(CONTROLS) && (b.querySelector('.widget-output') || b.querySelector('img')) &&
      !b.parentElement.closest('.widget-box'));
  return boxes.map((b, i) => {
    b.setAttribute('data-test-box', i);
    return [...b.querySelectorAll(CONTROLS)].map((c, j) => {
      c.setAttribute('data-test-control', j);
      return c.classList.contains('widget-dropdown') ? 'dropdown' : 'slider';
    });
  });
}"""

_FIGURE = """box => {
  const img = box.querySelector('img');
  const text = box.innerText;      // a failed redraw shows its traceback under the widget's title
  return {src: img && img.complete && img.naturalWidth > 0 ? img.src : null,
          traceback: /Traceback|\\w+Error\\b/.test(text) ? text.slice(0, 2000) : null};
}"""


def _wait_figure(box, old, timeout=180):
    """The widget's figure once it is drawn and differs from ``old`` (its image source)."""
    deadline = time.time() + timeout
    state = box.evaluate(_FIGURE)
    while time.time() < deadline:
        state = box.evaluate(_FIGURE)
        assert not state["traceback"], f"the widget's output shows an error:\n{state['traceback']}"
        if state["src"] and state["src"] != old:
            return state["src"]
        time.sleep(0.25)
    return None


def _shutdown_kernels(base, token):
    """Free the CPU for the next notebook: stop every kernel of the server (REST API)."""
    with urllib.request.urlopen(f"{base}/api/kernels?token={token}", timeout=30) as r:
        kernels = json.load(r)
    for k in kernels:
        req = urllib.request.Request(f"{base}/api/kernels/{k['id']}?token={token}", method="DELETE")
        with contextlib.suppress(OSError):
            urllib.request.urlopen(req, timeout=30).close()


def _move(page, control, kind):
    """Move a control as a person would: drag a slider's handle to the far side of its track with
    the mouse, or pick the next option of a drop-down."""
    if kind == "dropdown":
        select = control.locator("select")
        n, i = select.evaluate("s => [s.options.length, s.selectedIndex]")
        select.select_option(index=(i + 1) % n)
        return
    handle = control.locator(".noUi-handle").first
    track = control.locator(".noUi-target").first
    h, t = handle.bounding_box(), track.bounding_box()
    x0, y0 = h["x"] + h["width"] / 2, h["y"] + h["height"] / 2
    x1 = t["x"] + t["width"] * (0.2 if (x0 - t["x"]) / t["width"] > 0.5 else 0.8)
    page.mouse.move(x0, y0)
    page.mouse.down()
    page.mouse.move(x1, y0, steps=8)
    page.mouse.up()


def _value(control, kind):
    if kind == "dropdown":
        return control.locator("select").input_value()
    return control.locator(".widget-readout").first.inner_text().strip()


@pytest.mark.parametrize("path", WIDGET_NOTEBOOKS, ids=lambda p: str(p.relative_to(CHAPTERS)))
def test_widgets_respond_in_jupyterlab(path, browser, lab, shots):
    base, token, log = lab
    rel = path.relative_to(CHAPTERS).as_posix()
    names = SHOW.findall(_code(path))
    blocked = []
    ctx = _offline_context(browser, blocked)
    page = ctx.new_page()
    page.set_default_timeout(120_000)
    try:
        # A fresh workspace per notebook (?reset): JupyterLab reopens nothing from the last test.
        page.goto(f"{base}/lab/workspaces/{secrets.token_hex(4)}/tree/{rel}?reset&token={token}")
        page.wait_for_function(_PANEL, arg=rel, timeout=120_000)
        wanted = _widget_cells(path)
        result = page.evaluate(_RUN_CELLS, [rel, wanted, 600])
        assert result["how"] == "done", f"{rel}: running the widgets' cells took more than 600 s (kernel {result['status']})"
        errors = [c for c in result["cells"] if c["errors"]]
        assert not errors, f"{rel}: cells failed: {errors}"
        ran = {c["index"] for c in result["cells"] if c["count"] is not None}
        assert ran == set(wanted), f"{rel}: cells {sorted(wanted)} should have run, these did: {sorted(ran)}"
        assert result["status"] == "idle", f"{rel}: kernel {result['status']}"

        page.wait_for_selector(".widget-box img", state="attached", timeout=120_000)
        widgets = page.evaluate(_FIND_WIDGETS)
        assert len(widgets) >= len(names), f"{rel}: {len(names)} widgets shown ({names}), {len(widgets)} rendered"
        stem = rel.replace("/", "_").removesuffix(".ipynb")
        for i, kinds in enumerate(widgets):
            box = page.locator(f'[data-test-box="{i}"]')
            box.scroll_into_view_if_needed()
            src = _wait_figure(box.element_handle(), None)
            assert src, f"{rel}: widget {i} drew no figure"
            box.screenshot(path=shots / f"{stem}_widget{i}_0_initial.png")
            for j, kind in enumerate(kinds):
                control = box.locator(f'[data-test-control="{j}"]')
                figure = box.locator("img").first
                before_value, before_png = _value(control, kind), figure.screenshot()
                _move(page, control, kind)
                after_value = _value(control, kind)
                assert after_value != before_value, f"{rel}: widget {i}: {kind} {j} did not move ({before_value})"
                new = _wait_figure(box.element_handle(), src)
                assert new, f"{rel}: widget {i}: the figure did not change when {kind} {j} moved {before_value} -> {after_value}"
                page.wait_for_timeout(200)
                assert figure.screenshot() != before_png, f"{rel}: widget {i}: the figure looks the same after {kind} {j} moved"
                box.screenshot(path=shots / f"{stem}_widget{i}_{j + 1}_{kind}{j}_{after_value}.png")
                src = new
        page.screenshot(path=shots / f"{stem}_lab.png")
    finally:
        ctx.close()
        _shutdown_kernels(base, token)
    assert not blocked, f"JupyterLab asked for non-local resources: {blocked[:5]}"


# ---- the rendered book ------------------------------------------------------------------------------

_PAGE = """async () => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) await MathJax.startup.promise;
  const main = document.querySelector('main') || document.body;
  const imgs = [...main.querySelectorAll('img')];
  const maths = [...main.querySelectorAll('.math')];
  const clone = main.cloneNode(true);
  clone.querySelectorAll('pre, code, script, style, mjx-container, .math, .highlight').forEach(e => e.remove());
  return {
    title: document.title,
    images: imgs.length,
    output_images: main.querySelectorAll('.cell_output img').length,
    broken: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.getAttribute('src')),
    maths: maths.length,
    untypeset: maths.filter(m => !m.querySelector('mjx-container')).map(m => m.textContent.slice(0, 80)),
    merrors: [...main.querySelectorAll('mjx-merror')].map(e => e.textContent.slice(0, 80)),
    mathjax: !!(window.MathJax && MathJax.version),
    tex: window.MathJax && MathJax.startup && MathJax.startup.document
         ? [...MathJax.startup.document.math].map(m => m.math) : [],
    text: clone.innerText,
    tracebacks: [...main.querySelectorAll('.output.traceback, .output.error, .cell_output .traceback')].length,
  };
}"""

# LaTeX written in a non-raw Python string: "\\nabla" became a newline + "abla", "\\rho" a carriage
# return + "ho", "\\theta" a tab + "heta"... MathJax typesets these without an error.
DAMAGED_TEX = re.compile(r"[\x00-\x08\x0b-\x1f]|[\n\t](abla|ho\b|heta|au\b|imes|ext|ilde|frac|op\b|riangle|eq\b|eg\b|ewline|otin)")
RAW_MATH = re.compile(r"(?<![\\\w])\$[^$\s][^$\n]{0,200}?\$|\$\$|\\\(|\\\[|\\begin\{")


def _executed_images(build, page):
    nb = build.out.parent / "jupyter_execute" / pathlib.Path(page).with_suffix(".ipynb")
    if not nb.exists():
        return None
    cells = json.loads(nb.read_text(encoding="utf-8"))["cells"]
    outputs = [o for c in cells if c["cell_type"] == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o["output_type"] == "error"], f"{nb.name} has error outputs"
    return sum(1 for o in outputs if any(k.startswith("image/") for k in o.get("data", {})))


@pytest.mark.parametrize("page", _book_pages())
def test_book_page(page, book, browser, shots):
    build, base = book
    blocked = []
    ctx = _offline_context(browser, blocked)
    tab = ctx.new_page()
    try:
        response = tab.goto(f"{base}/{page}", wait_until="load")
        assert response and response.ok, f"{page}: HTTP {response and response.status}"
        info = tab.evaluate(_PAGE)
        tab.screenshot(path=shots / f"book_{page.replace('/', '_').removesuffix('.html')}.png")
    finally:
        ctx.close()
    assert not blocked, f"{page} asked for non-local resources (the book must work offline): {blocked[:5]}"
    assert not info["broken"], f"{page}: images that did not load: {info['broken']}"
    expected = _executed_images(build, page)
    if expected is not None:
        assert info["output_images"] >= expected, f"{page}: {expected} figures executed, {info['output_images']} shown"
    if info["maths"]:
        assert info["mathjax"], f"{page}: MathJax did not load"
    assert not info["untypeset"], f"{page}: maths left untypeset: {info['untypeset'][:3]}"
    assert not info["merrors"], f"{page}: MathJax errors: {info['merrors'][:3]}"
    damaged = [t for t in info["tex"] if DAMAGED_TEX.search(t)]
    assert not damaged, f"{page}: maths with control characters (a lost backslash escape?): {damaged[:3]}"
    raw = RAW_MATH.findall(info["text"])
    assert not raw, f"{page}: raw LaTeX left in the text: {raw[:5]}"
    assert info["tracebacks"] == 0 and "Traceback (most recent call last)" not in info["text"], f"{page}: error output"


def test_book_landing_page_lists_every_chapter_in_order(book, browser):
    build, base = book
    html = (build.out / "book" / "index.html").read_text(encoding="utf-8")
    chapters = sorted(CHAPTERS.glob("[0-9][0-9]_*.ipynb"))
    positions = [html.find(f'href="../chapters/{p.stem}.html"') for p in chapters]
    assert all(i >= 0 for i in positions), "the landing page lacks a chapter link"
    assert positions == sorted(positions), "chapters are not listed in order"
    for p in [*chapters, *sorted((CHAPTERS / "solutions").glob("*.ipynb"))]:
        assert f'chapters/{p.relative_to(CHAPTERS).with_suffix(".html").as_posix()}' in html, f"navigation lacks {p.name}"
    if (CHAPTERS / "notation.md").exists():
        assert "chapters/notation.html" in html, "navigation lacks the notation page"
    assert 'href="../index.html"' in html or (build.out / "index.html").exists()
