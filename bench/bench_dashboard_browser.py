"""Dashboard in a browser: a run with 1,000,000 log lines and 1,000,000 metric points, then a live
stream of 1,000 lines/s.

(a) Opening: Debian Chromium (Playwright) signs in and opens the run page `--opens` times (the
    first with an empty chart cache); the page marks `cp:first-log-line` and `cp:first-chart`
    (performance.mark), read here as milliseconds from navigation start. Target: first log
    line < 1,000 ms.
(b) Streaming: the page stays open while this process writes 250 lines (and a metric point per
    line) every 250 ms through `runs.batches.write_batch`, the supervisor's own path (COPY,
    commit, frame published on Redis), for `--seconds`. The page measures its frames with
    requestAnimationFrame and its long tasks (PerformanceObserver); also: rows in the DOM, lines
    received, and a scroll up in the middle (the view must stay where the reader put it).
    Target: no frame gap over 250 ms (the page never freezes), DOM rows bounded.

Creates a throwaway database ``bench_dashboard_browser_<pid>`` and drops it at the end.

Usage: .venv/bin/python bench/bench_dashboard_browser.py [--lines 1000000] [--opens 5] [--seconds 15]
"""

from __future__ import annotations

import argparse
import io
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.bench_dashboard import (  # noqa: E402 - the repository root must be importable first
    bench_env,
    copy_points,
    setup_django,
    start_server,
    stop_server,
)
from bench.throwaway import PG, create_database, drop_database  # noqa: E402 - needs the root on sys.path

CHROMIUM = os.environ.get("CONTROLPLANE_TEST_BROWSER", "/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
FIRST_LINE_TARGET_MS = 1_000
FRAME_GAP_TARGET_MS = 250

MONITOR = """
() => {
  window.__bench = { frames: [], longTasks: [] };
  const tick = (t) => { window.__bench.frames.push(t); requestAnimationFrame(tick); };
  requestAnimationFrame(tick);
  new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) window.__bench.longTasks.push(entry.duration);
  }).observe({ type: "longtask" });
}
"""


def copy_lines(db_name: str, run_id: int, count: int, start: datetime) -> float:
    started = time.perf_counter()
    buffer = io.StringIO()
    with psycopg.connect(dbname=db_name, **PG) as conn, conn.cursor() as cur:
        with cur.copy("COPY runs_logline (run_id, seq, ts, stream, line) FROM STDIN") as copy:
            for seq in range(1, count + 1):
                stream = "stderr" if seq % 97 == 0 else "stdout"
                ts = (start + timedelta(milliseconds=seq)).isoformat()
                buffer.write(
                    f"{run_id}\t{seq}\t{ts}\t{stream}\tstep {seq:>8} | loss {4 / (1 + seq / 9e4):.5f}\n"
                )
                if buffer.tell() > 1 << 20:
                    copy.write(buffer.getvalue())
                    buffer.seek(0)
                    buffer.truncate()
            copy.write(buffer.getvalue())
        cur.execute("UPDATE runs_run SET log_seq = %s WHERE id = %s", [count, run_id])
        conn.commit()
    with psycopg.connect(dbname=db_name, autocommit=True, **PG) as conn:
        conn.execute("VACUUM ANALYZE runs_logline")
    return time.perf_counter() - started


def sign_in(page: Any, base: str, username: str, password: str) -> None:
    page.goto(f"{base}/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/")


def wait_until(page: Any, expression: str, timeout: float = 30) -> None:
    """Polls with page.evaluate: wait_for_function needs eval, which the page's CSP forbids."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            raise TimeoutError(expression)
        time.sleep(0.02)


def open_run(page: Any, url: str) -> tuple[float, float, int]:
    page.goto(url)
    wait_until(page, "performance.getEntriesByName('cp:first-log-line').length > 0")
    wait_until(page, "performance.getEntriesByName('cp:first-chart').length > 0")
    first_line = page.evaluate("performance.getEntriesByName('cp:first-log-line')[0].startTime")
    first_chart = page.evaluate("performance.getEntriesByName('cp:first-chart')[0].startTime")
    rows = page.locator("#log-rows .log-row").count()
    return float(first_line), float(first_chart), int(rows)


class Writer(threading.Thread):
    """What a supervisor does for a chatty program: a batch every 250 ms."""

    def __init__(self, run_id: int, first_step: int, lines_per_second: int, seconds: float) -> None:
        super().__init__(daemon=True)
        self.run_id, self.step, self.rate, self.seconds = run_id, first_step, lines_per_second, seconds
        self.written = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        from django.db import connection

        from runs.batches import Batch, write_batch

        cache: dict[str, int] = {}
        per_batch = self.rate // 4
        deadline = time.monotonic() + self.seconds
        try:
            while time.monotonic() < deadline:
                tick = time.monotonic()
                now = datetime.now(UTC)
                lines = [
                    (now, "stdout", f"live {self.step + i} \x1b[32mok\x1b[0m <b>{i}</b>")
                    for i in range(per_batch)
                ]
                points: list[tuple[str, int, float | None, datetime]] = [
                    ("train/loss", self.step + i, 1.0 / (1 + (self.step + i) / 1e5), now)
                    for i in range(per_batch)
                ]
                write_batch(self.run_id, 1, Batch(lines=lines, points=points), cache)
                self.step += per_batch
                self.written += per_batch
                time.sleep(max(0.0, 0.25 - (time.monotonic() - tick)))
        except BaseException as error:  # reported by the main thread
            self.error = error
        finally:
            connection.close()


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def bench_log_download(server: Any, base: str, user: Any, run_id: int) -> tuple[int, bool]:
    """(c) The whole log as text: time, and the server's memory while it streams."""
    import httpx

    from accounts.tokens import do_issue_token

    token = do_issue_token(user).plaintext
    baseline = rss_mib(server.pid)
    peak = baseline
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.05):
            peak = max(peak, rss_mib(server.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    size = lines = 0
    with httpx.stream(
        "GET",
        f"{base}/api/v1/runs/{run_id}/logs.txt",
        headers={"Authorization": f"Bearer {token}"},
        timeout=300,
    ) as response:
        for chunk in response.iter_bytes():
            size += len(chunk)
            lines += chunk.count(b"\n")
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    growth = peak - baseline
    print(
        f"\n(c) the whole log as text, GET /api/v1/runs/{{id}}/logs.txt: {lines:,} lines, {size / 1e6:.0f} MB"
    )
    print(
        f"    {seconds:.1f} s ({lines / seconds:,.0f} lines/s, {size / 1e6 / seconds:.1f} MB/s); server RSS"
        f" {baseline:.0f} -> peak {peak:.0f} MiB (growth {growth:.1f} MiB)"
    )
    return lines, growth < 64


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lines", type=int, default=1_000_000, help="log lines and metric points seeded")
    parser.add_argument("--opens", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=15.0, help="length of the live stream")
    parser.add_argument("--rate", type=int, default=1_000, help="live lines per second")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    db_name = f"bench_dashboard_browser_{os.getpid()}"
    data_dir = Path(tempfile.mkdtemp(prefix="bench-dashboard-browser-"))
    create_database(db_name)
    server = None
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"  # Playwright's loop shares this thread with the ORM
    try:
        env = bench_env(db_name, data_dir)
        setup_django(env)
        from django.contrib.auth import get_user_model

        from runs.models import MetricSeries, Run, RunStatus

        password = secrets.token_urlsafe(16)
        user = get_user_model().objects.create_user("bench", password=password)
        run = Run.objects.create(
            name="a million lines",
            owner=user,
            program="tinygpt",
            queue="training",
            status=RunStatus.RUNNING,
            attempt=1,
            started_at=datetime.now(UTC) - timedelta(hours=3),
            worker="bench",
        )
        start = datetime.now(UTC) - timedelta(hours=3)
        print(f"seeded {args.lines:,} log lines in {copy_lines(db_name, run.pk, args.lines, start):.1f} s")
        series = MetricSeries.objects.create(run=run, key="train/loss")
        seconds = copy_points(db_name, series.pk, args.lines, start, 500_000)
        print(f"seeded {args.lines:,} metric points in {seconds:.1f} s")
        server, base = start_server(env, data_dir / "web.log")
        url = f"{base}/runs/{run.pk}/"

        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            page = context.new_page()
            sign_in(page, base, "bench", password)
            print(f"\n(a) opening the run page ({args.lines:,} lines and points), ms from navigation start")
            print(f"    {'open':<18} {'first log line':>15} {'first chart':>12} {'DOM rows':>9}")
            lines_ms, charts_ms = [], []
            for attempt in range(args.opens):
                first_line, first_chart, rows = open_run(page, url)
                lines_ms.append(first_line)
                charts_ms.append(first_chart)
                label = "1 (cold cache)" if attempt == 0 else str(attempt + 1)
                print(f"    {label:<18} {first_line:>15.0f} {first_chart:>12.0f} {rows:>9}")
            medians = f"{statistics.median(lines_ms):>15.0f} {statistics.median(charts_ms):>12.0f}"
            print(f"    {'median':<18} {medians}")

            print(
                f"\n(b) a live stream of {args.rate:,} lines/s (+ a point per line) for {args.seconds:.0f} s"
            )
            page.goto(url)
            wait_until(page, "window.__cp && window.__cp.socketState() === 'live'")
            page.evaluate(MONITOR)
            first_seq = page.evaluate("window.__cp.lastSeq()")
            writer = Writer(run.pk, args.lines, args.rate, args.seconds)
            writer.start()
            time.sleep(args.seconds / 2)
            # The reader scrolls up mid-stream: the view must stay put (paused), not jump back down.
            page.locator("#log-viewport").hover()
            page.mouse.wheel(0, -600)
            time.sleep(0.5)
            held_at = page.evaluate("document.getElementById('log-viewport').scrollTop")
            writer.join()
            if writer.error is not None:
                raise writer.error
            time.sleep(1.5)  # the last frames arrive
            still_at = page.evaluate("document.getElementById('log-viewport').scrollTop")
            follow_text = page.locator("#log-follow").inner_text()
            result = page.evaluate(
                """() => {
                  const f = window.__bench.frames;
                  const gaps = f.slice(1).map((t, i) => t - f[i]).sort((a, b) => a - b);
                  return {
                    frames: f.length,
                    seconds: (f[f.length - 1] - f[0]) / 1000,
                    maxGap: gaps[gaps.length - 1],
                    p99Gap: gaps[Math.floor(gaps.length * 0.99)],
                    longTasks: window.__bench.longTasks.length,
                    longTaskMs: window.__bench.longTasks.reduce((a, b) => a + b, 0),
                    rows: document.querySelectorAll('#log-rows .log-row').length,
                    lastSeq: window.__cp.lastSeq(),
                    held: window.__cp.logSeqs().length,
                    heapMb: performance.memory ? performance.memory.usedJSHeapSize / 1e6 : null,
                  };
                }"""
            )
            received = result["lastSeq"] - first_seq
            print(f"    lines written {writer.written:,}, received by the page {received:,}")
            fps = result["frames"] / result["seconds"]
            print(
                f"    frames {result['frames']} in {result['seconds']:.1f} s ({fps:.0f}/s);"
                f" frame gap p99 {result['p99Gap']:.0f} ms, max {result['maxGap']:.0f} ms"
            )
            print(f"    long tasks (> 50 ms): {result['longTasks']}, {result['longTaskMs']:.0f} ms in all")
            print(
                f"    DOM rows {result['rows']}, lines held in memory {result['held']:,},"
                f" JS heap {result['heapMb']:.0f} MB"
                if result["heapMb"]
                else ""
            )
            print(
                f"    scrolled up mid-stream: scrollTop {held_at:.0f} -> {still_at:.0f} after the stream;"
                f" button says {follow_text!r}"
            )
            browser.close()
        download_lines, download_ok = bench_log_download(server, base, user, run.pk)
        ok = (
            statistics.median(lines_ms) < FIRST_LINE_TARGET_MS
            and result["maxGap"] < FRAME_GAP_TARGET_MS
            and result["rows"] < 300
            and received == writer.written
            and abs(still_at - held_at) < 1
            and download_ok
            and download_lines == args.lines + writer.written
        )
        print(
            f"\n{'PASS' if ok else 'FAIL'}: first log line < {FIRST_LINE_TARGET_MS} ms; no frame gap over"
            f" {FRAME_GAP_TARGET_MS} ms while streaming; every line received; the paused view held still;"
            " the log download streams (server growth < 64 MiB)"
        )
        return 0 if ok else 1
    finally:
        if server is not None:
            stop_server(server)
        from django.db import connections

        connections.close_all()
        drop_database(db_name)
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
