"""End-to-end tests of the build dashboard (shared/python/debate_queue/dashboard).

Real everything: redis-server, the worker running podman builds of the test
image, the dashboard served by uvicorn (mounted under /builds in a FastAPI
app the way the backend mounts it, or run with `python3 -m
debate_queue.dashboard`), and headless Chromium driven by Selenium.  Each
page's screenshot lands in $TEST_ARTIFACTS/dashboard (default
build/test-artifacts/dashboard); docs/dashboard-*.png are copies.

Missing chromium or chromedriver fails these tests: they do not skip.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import msgpack
import pytest

from tests.harness import (REPO, SHARED_PYTHON, Fleet, RedisServer, free_port, make_profile, nskey, submit,
                           wait_result)


pytestmark = [pytest.mark.containers, pytest.mark.slow]

SHARED_PY = str(SHARED_PYTHON)
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS", REPO / "build" / "test-artifacts")) / "dashboard"
TOKEN = "t0ken-" + uuid.uuid4().hex
WINDOW = (1400, 900)


# ---------------------------------------------------------------- helpers

def wait_until(fn, timeout=20.0, step=0.1, what="condition"):
    """Poll fn() until it returns something truthy; return it, or fail naming what."""
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            last = fn()
        except Exception as e:       # a stale element while the page redraws
            last = e
        if last and not isinstance(last, Exception):
            return last
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def shot(driver, name):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"dashboard-{name}.png"
    driver.save_screenshot(str(path))
    return path


def js(driver, script, *args):
    return driver.execute_script(script, *args)


def click(driver, css, what):
    """Click the element css names, finding it again if a redraw replaced it meanwhile."""
    from selenium.webdriver.common.by import By
    wait_until(lambda: driver.find_element(By.CSS_SELECTOR, css).click() or True, 10, what=what)


def browser_errors(driver):
    return [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


class Dashboard:
    """A dashboard server process; .url is its page, .base its scheme://host:port."""

    def __init__(self, tmp, argv, base, url, env=None):
        self.base = base
        self.url = url
        self.log = Path(tmp) / f"dashboard-{uuid.uuid4().hex[:6]}.log"
        self._f = open(self.log, "wb")
        self.proc = subprocess.Popen(argv, stdout=self._f, stderr=subprocess.STDOUT, cwd=tmp,
                                     env=dict(os.environ, PYTHONPATH=SHARED_PY, **(env or {})),
                                     start_new_session=True)
        wait_until(self._up, 30, 0.1, f"the dashboard at {url}")

    def _up(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"dashboard exited {self.proc.returncode}:\n{self.log.read_text()}")
        try:
            return httpx.get(self.url + "api/session", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self, timeout=10):
        """SIGTERM (open live streams must not hold it up), then SIGKILL; True if it exited in time."""
        clean = True
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                clean = False
                self.proc.kill()
                self.proc.wait()
        self._f.close()
        return clean


MOUNTED_APP = '''
import sys
from fastapi import FastAPI
from debate_queue import AsyncClient
from debate_queue.dashboard import dashboard_app

app = FastAPI()

@app.get("/")
def root():
    return {{"backend": "ok"}}

app.mount("/builds", dashboard_app(AsyncClient({url!r}, {ns!r}), read_only=False, token={token!r}))
'''


def start_mounted(tmp, redis_url, ns):
    """The dashboard mounted at /builds of a FastAPI app, as the backend does it."""
    port = free_port()
    Path(tmp, "backend_app.py").write_text(MOUNTED_APP.format(url=redis_url, ns=ns, token=TOKEN))
    argv = [sys.executable, "-m", "uvicorn", "--app-dir", str(tmp), "--host", "127.0.0.1",
            "--port", str(port), "--log-level", "warning", "backend_app:app"]
    base = f"http://127.0.0.1:{port}"
    return Dashboard(tmp, argv, base, base + "/builds/")


def start_cli(tmp, redis_url, ns, *extra, port=None):
    """python3 -m debate_queue.dashboard, as an operator runs it."""
    port = port or free_port()
    tf = Path(tmp, f"token-{port}")
    tf.write_text(TOKEN + "\n")
    tf.chmod(0o600)
    argv = [sys.executable, "-m", "debate_queue.dashboard", "--redis", redis_url, "--namespace", ns,
            "--listen", f"127.0.0.1:{port}", "--token-file", str(tf), *extra]
    base = f"http://127.0.0.1:{port}"
    return Dashboard(tmp, argv, base, base + "/")


HOSTILE = r"""echo '<img src=x onerror="window.__xss=1"> <b>not bold</b>'
echo '<script>window.__xss=2</script> &amp; &lt;'
printf 'ESC \033[31mred\033[0m and bad UTF-8 \377\376 end\n'
head -c 6000 /dev/zero | tr '\0' 'W'; echo
echo "ERROR: the hostile build gives up" >&2
exit 7
"""


def _profile_with_script(root, name, script, **conf):
    make_profile(root, name, **conf)
    d = Path(root) / name / "airootfs" / "root"
    d.mkdir(parents=True, exist_ok=True)
    (d / "customize_airootfs.sh").write_text(script)
    return name


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def chrome():
    """One headless Chromium for the module; fails (never skips) when it is missing."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            pytest.fail(f"{path} is missing: scripts/install-deps installs chromium and chromium-driver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail("python3-selenium is missing: scripts/install-deps installs it")
    profile = tempfile.mkdtemp(prefix="debate-chromium-")
    opts = webdriver.ChromeOptions()
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              "--disable-quic", f"--user-data-dir={profile}", f"--window-size={WINDOW[0]},{WINDOW[1]}"):
        opts.add_argument(a)
    opts.binary_location = CHROMIUM
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


class Stack:
    """Redis, a podman worker and the mounted dashboard, shared by the tests of the module."""


@pytest.fixture(scope="module")
def stack(tmp_path_factory, podman):
    tmp = tmp_path_factory.mktemp("dash")
    srv = RedisServer(tmp / "redis").start()
    s = Stack()
    s.tmp, s.srv, s.r = tmp, srv, srv.client()
    s.ns = "d" + uuid.uuid4().hex[:8]
    s.broot = tmp / "builds"
    s.broot.mkdir()
    s.fleet = Fleet(tmp, srv.url, s.ns, s.broot)
    s.worker = None
    s.dash = None
    try:
        s.worker = s.fleet.start(podman, worker={"concurrency": 2}, sandbox={"memory": "256m", "cpus": 1})
        s.worker.wait_log(r"redis fetch: connected", timeout=20)
        s.dash = start_mounted(tmp, srv.url, s.ns)
        yield s
    finally:
        if s.dash:
            s.dash.stop()
        s.fleet.close()
        srv.stop()


def login(driver, stack_or_dash_url):
    """Log in with the page's form (sets the HttpOnly cookie)."""
    from selenium.webdriver.common.by import By
    driver.get(stack_or_dash_url)
    form = wait_until(lambda: driver.find_element(By.ID, "login"), 10, what="the login form")
    shown = wait_until(lambda: ("login" if form.is_displayed() else
                                "in" if driver.find_element(By.ID, "logout").is_displayed() else None),
                       10, what="the login form or the logout button")
    if shown == "in":        # the cookie from an earlier test
        return
    form.find_element(By.NAME, "token").send_keys(TOKEN)
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait_until(lambda: driver.find_element(By.ID, "logout").is_displayed(), 10, what="logged in")


# ---------------------------------------------------------------- tests

def test_dashboard_finished_and_failed_pages(stack, chrome):
    """A succeeded job shows its artifacts with size and sha256; a failed one its error and log tail."""
    from selenium.webdriver.common.by import By
    ok = make_profile(stack.broot, "p-ok", iso_name="dashok", mode="ok", seconds=1)
    # A hostile build: markup, a script tag, a 6000-byte word, escapes and bad UTF-8, then exit 7.
    bad = _profile_with_script(stack.broot, "p-fail", HOSTILE, mode="ok", seconds=0.5)
    plain = make_profile(stack.broot, "p-plain-fail", mode="fail", seconds=0.5, exit=7)
    ok_id = submit(stack.r, stack.ns, profile=ok, output="out/ok")
    bad_id = submit(stack.r, stack.ns, profile=bad, output="out/bad", id="f" * 40 + "-a-long-job-id-" + "x" * 8)
    fail_id = submit(stack.r, stack.ns, profile=plain, output="out/plain")
    res_ok = wait_result(stack.r, stack.ns, ok_id, 60)
    got = stack.r.blpop(nskey(stack.ns, "result", bad_id), timeout=60)
    assert got, "no result for the hostile build"
    # The worker passes the build's bytes through; invalid UTF-8 is the reader's to replace.
    res_bad = msgpack.unpackb(got[1], unicode_errors="replace")
    assert res_ok["status"] == "succeeded" and res_ok["artifacts"], res_ok
    assert res_bad["status"] == "failed", res_bad

    chrome.get(stack.dash.url + "job/" + ok_id)
    wait_until(lambda: chrome.find_element(By.ID, "result").is_displayed(), 15, what="the result panel")
    art = res_ok["artifacts"][0]
    rows = wait_until(lambda: chrome.find_elements(By.CSS_SELECTOR, "#result table.arts tbody tr"), 10,
                      what="artifact rows")
    cells = [c.text for c in rows[0].find_elements(By.TAG_NAME, "td")]
    assert cells[0] == art["name"]
    assert cells[2] == art["sha256"]
    assert rows[0].find_elements(By.TAG_NAME, "td")[1].get_attribute("title") == f"{art['size']} bytes"
    assert chrome.find_element(By.CSS_SELECTOR, "#job-state .chip").text == "succeeded"
    wait_until(lambda: len(chrome.find_elements(By.CSS_SELECTOR, "#log .ln")) > 5, 10, what="the log replayed")
    shot(chrome, "job-finished")

    chrome.get(stack.dash.url + "job/" + bad_id)
    wait_until(lambda: chrome.find_element(By.ID, "result").is_displayed(), 15, what="the failed result")
    assert "panel-bad" in chrome.find_element(By.ID, "result").get_attribute("class")
    assert chrome.find_element(By.CSS_SELECTOR, "#result .errbox").text == res_bad["error"]
    tail = js(chrome, "return Array.from(document.querySelectorAll('#result .log-tail .ln')).map(e => e.textContent)")
    assert tail == res_bad["log_tail"]
    wait_until(lambda: any("<img src=x" in t for t in js(
        chrome, "return Array.from(document.querySelectorAll('#log .ln')).map(e => e.lastChild.textContent)")),
        10, what="the hostile lines in the log, as text")
    # Build output is text, never markup: nothing ran, no element came from it, nothing overflows.
    assert js(chrome, "return document.querySelectorAll('#log img, #log b, #log script, #result img, #result b').length") == 0
    assert js(chrome, "return window.__xss === undefined")
    assert js(chrome, "return document.documentElement.scrollWidth <= window.innerWidth")
    assert js(chrome, "const b = document.getElementById('log'); return b.scrollWidth <= b.clientWidth")
    shot(chrome, "job-hostile")

    # An ordinary failure, for the screenshot an operator would see most.
    res_fail = wait_result(stack.r, stack.ns, fail_id, 60)
    chrome.get(stack.dash.url + "job/" + fail_id)
    wait_until(lambda: chrome.find_element(By.CSS_SELECTOR, "#result .errbox").text == res_fail["error"], 15,
               what="the plain failure's error")
    shot(chrome, "job-failed")

    # Recent results on the fleet page: colour, duration, worker, attempt.
    chrome.get(stack.dash.url)
    sel = f"#results tr[data-job='{bad_id}']"
    wait_until(lambda: chrome.find_element(By.CSS_SELECTOR, sel), 10, what="the failed job in recent results")
    row = js(chrome, """const r = document.querySelector(arguments[0]); return {cls: r.className,
             chip: r.querySelector('.chip').className, tds: Array.from(r.cells).map(c => c.textContent)}""", sel)
    assert row["chip"] == "chip st-failed" and "row-bad" in row["cls"]
    assert row["tds"][3] == res_bad["worker"] and row["tds"][4] == str(res_bad["attempt"])
    assert row["tds"][2].endswith("s") and row["tds"][6] == res_bad["error"]
    assert not browser_errors(chrome)


def test_dashboard_long_log_keeps_the_page_responsive(stack, chrome):
    """A 30,000-line log replays into the page: the last 20,000 lines are shown, in order, and a note says so."""
    from selenium.webdriver.common.by import By
    prof = make_profile(stack.broot, "p-flood", mode="flood", lines=30000)
    jid = submit(stack.r, stack.ns, profile=prof, output="out/flood")
    res = wait_result(stack.r, stack.ns, jid, 60)
    assert res["status"] == "succeeded" and not res["dropped_lines"], res
    total = sum(len(e["lines"]) for e in (msgpack.unpackb(f[b"event"]) for _, f in
                                          stack.r.xrange(nskey(stack.ns, "log", jid))) if e["type"] == "log")
    t0 = time.time()
    chrome.get(stack.dash.url + "job/" + jid)
    wait_until(lambda: js(chrome, "return document.querySelector('.logpanel h2 .n').textContent") == str(total),
               60, 0.2, what=f"all {total} lines counted")
    took = time.time() - t0
    shown = js(chrome, """return Array.from(document.querySelectorAll('#log .ln'))
                          .map(e => [e.className, e.lastChild.textContent, e.firstChild.textContent])""")
    assert shown[0][0] == "ln ln-note" and f"{total - 20000} earlier lines not shown" in shown[0][1], shown[0]
    lines = shown[1:]
    assert len(lines) == 20000
    assert [int(x[2]) for x in lines] == list(range(total - 19999, total + 1))
    assert lines[-1][1] == res["log_tail"][-1]
    assert chrome.find_element(By.CSS_SELECTOR, "#job-state .chip").text == "succeeded"
    print(f"{total} lines replayed into the job page in {took:.1f}s")


def test_dashboard_dead_letter_retried_from_page_runs(stack, chrome):
    """Dead letters show their reasons; Retry on the page puts one back and it runs."""
    from selenium.webdriver.common.by import By
    later = "p-later"
    late_id = submit(stack.r, stack.ns, profile=later, output="out/later")     # no such profile yet
    stack.r.lpush(nskey(stack.ns, "queue"), b"\xc1 not msgpack")
    stack.r.lpush(nskey(stack.ns, "queue"), msgpack.packb({"id": "../etc", "profile": "x", "output": "y"}))
    wait_until(lambda: stack.r.llen(nskey(stack.ns, "dead")) >= 3, 30, what="three dead letters")

    login(chrome, stack.dash.url + "dead")
    chrome.get(stack.dash.url + "dead")
    rows = wait_until(lambda: js(chrome, """return Array.from(document.querySelectorAll('#dead-table tbody tr[data-index]'))
                                   .map(r => [r.dataset.index, ...Array.from(r.cells).map(c => c.textContent)])"""),
                      15, what="dead letter rows")
    reasons = {r[3] for r in rows}
    assert {"bad_path", "malformed", "bad_id"} <= reasons, reasons
    assert any(r[3] == "bad_path" and "p-later" in r[6] for r in rows), rows
    shot(chrome, "dead-letters")

    make_profile(stack.broot, later, mode="ok", seconds=0.5)
    index = next(r[0] for r in rows if r[4] == late_id)
    click(chrome, f"#dead-table tr[data-index='{index}'] button[data-action=retry]", "the Retry button")
    res = wait_result(stack.r, stack.ns, late_id, 60)
    assert res["status"] == "succeeded", res
    wait_until(lambda: late_id not in chrome.find_element(By.ID, "dead-table").text, 10,
               what="the retried letter to leave the list")
    assert not browser_errors(chrome)


def test_dashboard_running_build_is_live_and_cancel_stops_it(stack, chrome):
    """The bar advances and log lines arrive without a reload; Cancel stops the build within seconds."""
    from selenium.webdriver.common.by import By
    slow = _profile_with_script(stack.broot, "p-slow",
                                "i=0; while [ $i -lt 400 ]; do i=$((i+1)); echo \"tick $i\"; sleep 0.1; done\n",
                                mode="ok", seconds=2)
    jid = submit(stack.r, stack.ns, profile=slow, output="out/slow", timeout=120, warning=6)
    other = submit(stack.r, stack.ns, profile=slow, output="out/slow2", timeout=120, warning=90)
    waiting = submit(stack.r, stack.ns, profile=slow, output="out/slow3")   # both slots are taken

    login(chrome, stack.dash.url)
    # Cancel a queued job from the queue table: it never starts.
    click(chrome, f"#queue tr button[data-action=cancel][data-id='{waiting}']", "the queued job's Cancel")
    wait_until(lambda: stack.r.hget(nskey(stack.ns, "cancel"), waiting), 10, what="the cancel recorded")
    js(chrome, "window.__mark = 'no reload'")
    sel = f"#running tr[data-job='{jid}'] .bar"
    wait_until(lambda: chrome.find_element(By.CSS_SELECTOR, sel), 30, what="the running build's bar")
    wait_until(lambda: chrome.find_element(By.CSS_SELECTOR, sel).get_attribute("data-start"), 15,
               what="the build's start time")

    def width():
        return float(js(chrome, "return parseFloat(document.querySelector(arguments[0] + ' .fill').style.width)", sel))
    w1 = wait_until(width, 15, what="a bar with some width")
    time.sleep(3)
    w2 = width()
    assert w2 > w1, (w1, w2)
    assert chrome.find_element(By.CSS_SELECTOR, sel + " .warnmark") is not None
    wait_until(lambda: chrome.find_element(By.CSS_SELECTOR, f"#running tr[data-job='{jid}'] .badge-warn"), 15,
               what="the warning badge after 6 s")
    wait_until(lambda: chrome.find_element(By.CSS_SELECTOR, f"#running tr[data-job='{jid}'] td:nth-child(6)").text != "–",
               10, what="memory from stats")
    assert js(chrome, "return window.__mark") == "no reload"
    shot(chrome, "fleet")

    chrome.get(stack.dash.url + "job/" + jid)
    js(chrome, "window.__mark = 'no reload'")

    def ticks():
        return [t for t in js(chrome, "return Array.from(document.querySelectorAll('#log .ln')).map(e => e.lastChild.textContent)")
                if t.startswith("tick ")]
    n1 = len(wait_until(ticks, 20, what="tick lines"))
    n2 = len(wait_until(lambda: len(ticks()) > n1 + 5 and ticks(), 10, what="more tick lines"))
    assert n2 > n1 and js(chrome, "return window.__mark") == "no reload"
    box = chrome.find_element(By.ID, "log")
    at_bottom = js(chrome, "const b = arguments[0]; return b.scrollHeight - b.scrollTop - b.clientHeight < 8", box)
    assert at_bottom, "the log follows its end while the user has not scrolled up"
    shot(chrome, "job-running")
    # Scrolled up, the log stays where the user put it while lines keep coming.
    js(chrome, "arguments[0].scrollTop = 0", box)
    n3 = len(ticks())
    wait_until(lambda: len(ticks()) > n3 + 3, 10, what="lines while scrolled up")
    assert js(chrome, "return arguments[0].scrollTop", box) == 0
    follow = chrome.find_element(By.ID, "follow")
    assert follow.is_displayed()
    follow.click()
    wait_until(lambda: js(chrome, "const b = arguments[0]; return b.scrollHeight - b.scrollTop - b.clientHeight < 8", box),
               5, what="following again")

    t0 = time.time()
    click(chrome, "button[data-action=cancel]", "the Cancel button")
    wait_until(lambda: chrome.find_element(By.CSS_SELECTOR, "#job-state .chip").text == "cancelled", 20,
               what="the page to show cancelled")
    took = time.time() - t0
    res = wait_result(stack.r, stack.ns, jid, 10)
    assert res["status"] == "cancelled", res
    assert took < 15, f"cancel took {took:.1f}s"
    res = wait_result(stack.r, stack.ns, waiting, 30)     # taken by the freed slot, recorded at once
    assert res["status"] == "cancelled", res
    assert "started" not in {e[b"type"] for _, e in stack.r.xrange(nskey(stack.ns, "log", waiting))}
    stack.r.hset(nskey(stack.ns, "cancel"), other, time.time())
    wait_result(stack.r, stack.ns, other, 30)
    print(f"cancel from the page to `cancelled` on the page: {took:.1f}s")
    assert not browser_errors(chrome)


def _sse(client, url, headers=None, until=None, seconds=30):
    """Read an SSE response: [(id, event, data)] until until(list) is true or seconds pass."""
    out, buf = [], ""
    deadline = time.time() + seconds
    with client.stream("GET", url, headers=headers or {}, timeout=30) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        for chunk in resp.iter_text():
            buf += chunk
            while "\n\n" in buf:
                block, buf = buf.split("\n\n", 1)
                msg = {}
                for line in block.split("\n"):
                    field, _, value = line.partition(":")
                    msg[field] = value[1:] if value.startswith(" ") else value
                if "event" in msg:
                    out.append((msg.get("id"), msg["event"], json.loads(msg.get("data", "null"))))
            if (until and until(out)) or time.time() > deadline:
                break
    return out


def test_dashboard_live_stream_resumes_and_shares_one_snapshot(stack):
    """Last-Event-ID resumes a job's stream after the seq it names; every tab gets the same snapshots."""
    prof = make_profile(stack.broot, "p-quick", mode="ok", seconds=0.5)
    jid = submit(stack.r, stack.ns, profile=prof, output="out/quick")
    wait_result(stack.r, stack.ns, jid, 60)
    url = stack.dash.url + "api/live?job=" + jid
    with httpx.Client() as c:
        full = [m for m in _sse(c, url, until=lambda o: any(e == "job" and d["type"] == "finished" for _, e, d in o))
                if m[1] == "job"]
        seqs = [d["seq"] for _, _, d in full]
        assert seqs == sorted(seqs) and len(seqs) == len(set(seqs)) and len(seqs) > 5
        assert full[-1][0] == f"{jid}:{seqs[-1]}"
        again = [m for m in _sse(c, url, headers={"Last-Event-ID": f"{jid}:{seqs[3]}"},
                                 until=lambda o: any(e == "job" and d["type"] == "finished" for _, e, d in o))
                 if m[1] == "job"]
        assert [d["seq"] for _, _, d in again] == seqs[4:]
    # Two tabs at once: the same snapshots (one task builds them), one every ~2 s.
    import threading
    got = {}

    def tab(name):
        with httpx.Client() as c:
            got[name] = [d["seq"] for _, e, d in _sse(c, stack.dash.url + "api/live", seconds=5.5) if e == "fleet"]
    ts = [threading.Thread(target=tab, args=(n,)) for n in ("a", "b")]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    a, b = set(got["a"][1:]), set(got["b"][1:])
    assert a and a & b, got
    assert 1 <= len(got["a"]) <= 5, got      # not one per tab, not one per request


def test_dashboard_refuses_without_token_wrong_origin_and_read_only(stack, chrome):
    """The server refuses changes: no token, a wrong one, a foreign Origin, GET, and read-only mode."""
    from selenium.webdriver.common.by import By
    base, url = stack.dash.base, stack.dash.url
    cancel_key = nskey(stack.ns, "cancel")
    same = {"Origin": base}

    def post(path, headers=None, cookies=None, body=None):
        with httpx.Client(cookies=cookies) as c:
            return c.post(url + path, headers=headers or {}, json=body if body is not None else {"id": "victim-1"},
                          timeout=10)

    assert post("api/cancel", same).status_code == 401
    assert post("api/cancel", dict(same, **{"X-Debate-Token": "wrong"})).status_code == 403
    assert post("api/cancel", dict(same, Authorization="Bearer wrong")).status_code == 403
    assert post("api/cancel", same, cookies={"debate_dashboard": "0" * 64}).status_code == 403
    tok = {"X-Debate-Token": TOKEN}
    assert post("api/cancel", dict(tok, Origin="http://evil.example")).status_code == 403
    assert post("api/cancel", dict(tok, Origin="null")).status_code == 403
    assert post("api/cancel", dict(tok, Referer="http://evil.example/builds/")).status_code == 403
    assert post("api/cancel", tok).status_code == 403          # neither Origin nor Referer
    assert httpx.get(url + "api/cancel?id=victim-1", headers=dict(same, **tok)).status_code == 405
    r = post("api/retry-dead", dict(same, **{"X-Debate-Token": "wrong"}), body={"index": 0, "digest": "0" * 64})
    assert r.status_code == 403
    assert stack.r.hget(cancel_key, "victim-1") is None, "a refused request changed state"
    r = post("api/cancel", dict(tok, Referer=url))
    assert r.status_code == 200, r.text
    assert stack.r.hget(cancel_key, "victim-1") is not None
    stack.r.hdel(cancel_key, "victim-1")
    # A wrong token in the login form sets no cookie.
    r = httpx.post(url + "login", data={"token": "wrong"}, headers=same, timeout=10)
    assert r.status_code == 303 and "debate_dashboard" not in r.headers.get("set-cookie", "")
    r = httpx.post(url + "login", data={"token": TOKEN}, headers=same, timeout=10)
    assert "debate_dashboard=" in r.headers.get("set-cookie", "") and "HttpOnly" in r.headers["set-cookie"]

    # Read-only: buttons hidden, and the server refuses even with the right token.
    ns = "r" + uuid.uuid4().hex[:8]
    qid = submit(stack.r, ns, profile="p", output="o")        # no worker in this namespace
    ro = start_cli(stack.tmp, stack.srv.url, ns, "--read-only")
    try:
        for path, body in (("api/cancel", {"id": qid}), ("api/retry-dead", {"index": 0, "digest": "0" * 64})):
            r = httpx.post(ro.url + path, json=body, headers={"Origin": ro.base, "X-Debate-Token": TOKEN}, timeout=10)
            assert r.status_code == 403, r.text
        assert stack.r.hget(nskey(ns, "cancel"), qid) is None
        chrome.get(ro.url)
        wait_until(lambda: chrome.find_element(By.CSS_SELECTOR, "#queue tbody td a").text == qid, 15,
                   what="the queued job listed")
        assert chrome.find_element(By.ID, "ro").is_displayed()
        assert not chrome.find_element(By.ID, "login").is_displayed()
        assert chrome.find_elements(By.CSS_SELECTOR, "[data-action]") == []
        chrome.get(ro.url + "job/" + qid)
        wait_until(lambda: chrome.find_element(By.CSS_SELECTOR, "#job-state .chip").text == "queued", 10,
                   what="the queued job page")
        assert chrome.find_elements(By.CSS_SELECTOR, "[data-action]") == []
    finally:
        ro.stop()


def test_dashboard_redis_and_dashboard_restart_mid_build_miss_no_line(tmp_path, podman, chrome):
    """Mid-build, Redis restarts and then the dashboard server does: the page follows
    through both (the second time reconnecting with its Last-Event-ID) and shows
    every line of the build exactly once, in order."""
    from selenium.webdriver.common.by import By
    srv = RedisServer(tmp_path / "redis", persist=True).start()
    ns = "x" + uuid.uuid4().hex[:8]
    broot = tmp_path / "builds"
    broot.mkdir()
    fleet = Fleet(tmp_path, srv.url, ns, broot)
    dash = None
    n = 150
    try:
        fleet.start(podman, sandbox={"memory": "256m", "cpus": 1})
        dash = start_cli(tmp_path, srv.url, ns)
        prof = _profile_with_script(broot, "p-lines",
                                    f"i=0; while [ $i -lt {n} ]; do i=$((i+1)); echo \"line $i\"; sleep 0.08; done\n",
                                    mode="ok", seconds=1)
        jid = submit(srv.client(), ns, profile=prof, output="out/lines", timeout=120)
        chrome.get(dash.url + "job/" + jid)

        def lines():
            return [t for t in js(chrome, "return Array.from(document.querySelectorAll('#log .ln'))"
                                          ".map(e => e.lastChild.textContent)") if t.startswith("line ")]
        wait_until(lambda: len(lines()) >= 10, 40, what="the first lines")
        srv.stop()
        wait_until(lambda: js(chrome, "return window.dashboard.conn") != "live", 15,
                   what="the page to show Redis is gone")
        time.sleep(1.0)
        srv.start()
        wait_until(lambda: js(chrome, "return window.dashboard.conn") == "live", 20,
                   what="the page to show Redis is back")
        seen = len(lines())
        wait_until(lambda: len(lines()) > seen, 20, what="lines after the Redis restart")
        assert len(lines()) < n, "the build ended before the dashboard restart"

        connects = js(chrome, "return window.dashboard.connects")
        port = int(dash.base.rsplit(":", 1)[1])
        t0 = time.time()
        assert dash.stop(timeout=5), "the dashboard did not stop on SIGTERM with a tab open"
        stopped = time.time() - t0
        time.sleep(1.0)                    # lines keep coming while nobody serves the page
        dash = start_cli(tmp_path, srv.url, ns, port=port)
        wait_until(lambda: chrome.find_element(By.CSS_SELECTOR, "#job-state .chip").text == "succeeded", 60,
                   what="the build to finish on the page")
        got = lines()
        assert got == [f"line {i}" for i in range(1, n + 1)], (len(got), got[:3], got[-3:])
        assert js(chrome, "return window.dashboard.connects") > connects, "the page never reconnected"
        print(f"dashboard stopped in {stopped:.2f}s with a live tab open")
    finally:
        if dash:
            dash.stop()
        fleet.close()
        srv.stop()


def _fake_fleet(r, ns, queued=1000, workers=5, per_worker=10):
    """A big fleet's state, written as the workers write it: for the page-render figure."""
    now = time.time()
    p = r.pipeline(transaction=False)
    for i in range(queued):
        p.lpush(nskey(ns, "queue"), msgpack.packb({"id": f"q{i:04d}", "profile": f"profiles/p{i % 17}",
                                                  "output": f"out/q{i}", "enqueued_at": now - 600 + i * 0.5}))
    for w in range(workers):
        wid = f"host{w}-{1000 + w}"
        ids = [f"run-{w}-{j}" for j in range(per_worker)]
        p.zadd(nskey(ns, "workers"), {wid: now})
        p.hset(nskey(ns, "worker", wid), mapping={
            "id": wid, "host": f"host{w}", "pid": 1000 + w, "version": "1.0", "started_at": now - 3600,
            "beat": now, "concurrency": per_worker + 2, "running": per_worker, "jobs": ",".join(ids)})
        p.expire(nskey(ns, "worker", wid), 600)
        for j, jid in enumerate(ids):
            started = now - 30 - 40 * j
            p.lpush(nskey(ns, "active", wid), msgpack.packb({"id": jid, "profile": "profiles/releng",
                                                              "output": f"out/{jid}", "timeout": 1200}))
            p.hset(nskey(ns, "job", jid), mapping={"state": "running", "worker": wid, "attempt": 1,
                                                  "started_at": started, "phase": "packages"})
            for seq, ev in enumerate([
                    {"type": "started", "worker": wid, "runtime": "podman", "image": "img",
                     "limits": {"memory": 4 << 30, "cpus": 2, "pids": 4096, "timeout": 1200, "warning": 900}},
                    {"type": "stats", "elapsed": now - started - 5, "memory": (1 << 30) + j, "cpu": 40.0},
                    {"type": "stats", "elapsed": now - started, "memory": (1 << 30) + j * 1000, "cpu": 47.5}], 1):
                ev.update(id=jid, seq=seq, ts=started + seq, attempt=1)
                p.xadd(nskey(ns, "log", jid), {"seq": seq, "type": ev["type"], "event": msgpack.packb(ev)})
    p.execute()


def test_dashboard_renders_1000_queued_50_running_quickly(stack, chrome):
    """With 1,000 queued jobs and 50 running, the fleet page renders well under a second."""
    from selenium.webdriver.common.by import By
    ns = "b" + uuid.uuid4().hex[:8]
    _fake_fleet(stack.r, ns)
    dash = start_cli(stack.tmp, stack.srv.url, ns, "--read-only")
    try:
        t0 = time.perf_counter()
        httpx.get(dash.url + "api/snapshot", timeout=10).raise_for_status()
        first_snapshot = time.perf_counter() - t0
        figures = []
        for _ in range(3):
            t0 = time.perf_counter()
            chrome.get(dash.url)
            wait_until(lambda: len(chrome.find_elements(By.CSS_SELECTOR, "#running tbody tr[data-job]")) == 50
                       and chrome.find_element(By.CSS_SELECTOR, "#queue h2 .n").text == "1000", 10, 0.01,
                       what="50 running rows and 1000 queued")
            figures.append(time.perf_counter() - t0)
        nav = js(chrome, "const t = performance.getEntriesByType('navigation')[0]; return t.domContentLoadedEventEnd")
        shot(chrome, "fleet-1000-queued-50-running")
        # Read in one go: the tables are redrawn with every snapshot.
        ids = js(chrome, "return Array.from(document.querySelectorAll('#queue tbody td a')).map(a => a.textContent)")
        assert ids == [f"q{i:04d}" for i in range(20)]      # one page, the next to run first
        click(chrome, "#queue .pager button[aria-label='next page']", "the queue's next page")
        wait_until(lambda: js(chrome, "return document.querySelector('#queue tbody td a').textContent") == "q0020",
                   10, what="the second page of the queue")
        report = {"first_snapshot_s": round(first_snapshot, 3), "page_render_s": [round(x, 3) for x in figures],
                  "dom_content_loaded_ms": round(nav, 1)}
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / "render-figure.json").write_text(json.dumps(report, indent=1))
        print("page render with 1000 queued, 50 running:", report)
        assert min(figures) < 3.0, report         # the figure is reported; this bound is generous
    finally:
        dash.stop()


def test_dashboard_cli_refuses_to_start_writable_without_a_token(tmp_path):
    """No token and no --read-only: a clear error, exit 2, nothing served; an empty token file is refused too."""
    env = dict(os.environ, PYTHONPATH=SHARED_PY)
    env.pop("DEBATE_DASHBOARD_TOKEN", None)
    argv = [sys.executable, "-m", "debate_queue.dashboard", "--redis", "redis://127.0.0.1:1/0",
            "--listen", f"127.0.0.1:{free_port()}"]
    cp = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=30)
    assert cp.returncode == 2 and "no token: give --token-file FILE" in cp.stderr, cp.stderr
    empty = tmp_path / "empty"
    empty.write_text("\n")
    cp = subprocess.run(argv + ["--token-file", str(empty)], capture_output=True, text=True, env=env, timeout=30)
    assert cp.returncode == 2 and f"--token-file {empty}: the file is empty" in cp.stderr, cp.stderr
    cp = subprocess.run(argv[:-2] + ["--listen", "8080"], capture_output=True, text=True, env=env, timeout=30)
    assert cp.returncode == 2 and "give HOST:PORT" in cp.stderr, cp.stderr
    from debate_queue import AsyncClient
    from debate_queue.dashboard import dashboard_app
    with pytest.raises(ValueError, match="give token="):
        dashboard_app(AsyncClient("redis://127.0.0.1:1/0", "x"))
