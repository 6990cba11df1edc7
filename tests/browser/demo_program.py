"""A program for the dashboard's browser tests, through the real protocol.

`hostile`: log lines a page must show as text and never run: HTML and script, ANSI colours
(16, 256 and true colour), carriage-return redraws, a line longer than the display cap, bytes
that are not UTF-8, and a stderr traceback; then a metric series with one planted spike.
`steady`: `lines` lines and a metric point every line, spread over `sleep` seconds.
"""

from __future__ import annotations

import sys
import time

from workers.sdk import Reporter, load_params

HOSTILE_LINES = [
    "<script>window.__pwned = 1</script>",
    '<img src=x onerror="window.__pwned = 2"> & &amp; &lt;b&gt; "double" \'single\'',
    "\x1b[31mred error\x1b[0m then \x1b[1;32mbold green\x1b[0m then plain",
    "\x1b[38;5;208morange-256\x1b[0m \x1b[38;2;10;120;200mtruecolor\x1b[0m \x1b[2K\x1b[1Gcursor-moves-dropped",
    "progress 10%\rprogress 50%\rprogress 100%",
    "long " + "0123456789" * 1500,
]


def main() -> int:
    params = load_params()
    reporter = Reporter.from_env()
    if params["mode"] == "hostile":
        for line in HOSTILE_LINES:
            print(line)
        sys.stdout.flush()
        sys.stdout.buffer.write(b"bad bytes: \xff\xfe\xc3\x28 end\n")
        sys.stdout.buffer.flush()
        print(
            "Traceback (most recent call last):\n  \x1b[31mValueError: shown in red\x1b[0m", file=sys.stderr
        )
        for step in range(params["lines"]):
            reporter.metric(step, {"train/loss": 100.0 if step == params["lines"] // 2 else 1.0 / (1 + step)})
        return 0
    pause = params["sleep"] / max(1, params["lines"])
    for step in range(params["lines"]):
        time.sleep(pause)
        print(f"step {step + 1} of {params['lines']}", flush=True)
        reporter.metric(step + 1, {"train/loss": 2.0 / (2 + step), "val/loss": 2.5 / (2 + step)})
        reporter.progress(step + 1, params["lines"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
