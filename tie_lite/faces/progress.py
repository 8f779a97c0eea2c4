"""Progress on stderr: tqdm's bar on a terminal; without one (CI, nohup, a pipe, a log file) a plain line now and
then with the count, the rate and the time left, so that a long run is never silent."""

from __future__ import annotations

import os
import sys
import time

from tqdm import tqdm

LINE_EVERY_S = 30.0  # without a terminal: a line this often (TIE_LITE_PROGRESS_SECONDS), and one at the end
EVERY_VARIABLE = "TIE_LITE_PROGRESS_SECONDS"


class Progress:
    """Counts finished items of `total`. `update(label)` after each; `close()` at the end."""

    def __init__(self, total: int, desc: str, unit: str, stream=None):
        self.stream = stream if stream is not None else sys.stderr
        self.total, self.desc, self.unit = total, desc, unit
        try:
            self.every_s = float(os.environ.get(EVERY_VARIABLE, LINE_EVERY_S))
        except ValueError:
            self.every_s = LINE_EVERY_S
        self.terminal = self.stream is not None and self.stream.isatty()
        self.bar = tqdm(total=total, desc=desc, unit=unit, file=self.stream, disable=not self.terminal)
        self.n = 0
        self.skipped = 0  # done before this run (a resumed eval): counted, but not in the rate
        self.start = time.monotonic()
        self.last_line = self.start  # when the last plain line was written

    def skip(self, count: int) -> None:
        """Items done before this run began."""
        self.n += count
        self.skipped += count
        self.bar.update(count)

    def update(self, label: str = "") -> None:
        self.n += 1
        if self.terminal:
            if label:
                self.bar.set_postfix_str(label, refresh=False)
            self.bar.update(1)
            return
        now = time.monotonic()
        if now - self.last_line >= self.every_s or self.n == self.total:
            self.last_line = now
            self.write_line(label)

    def write_line(self, label: str = "") -> None:
        elapsed = time.monotonic() - self.start
        done_here = self.n - self.skipped
        rate = done_here / elapsed if elapsed > 0 else 0.0
        left = (self.total - self.n) / rate if rate > 0 else None
        eta = tqdm.format_interval(left) if left is not None else "?"
        where = f" ({label})" if label else ""
        try:
            print(f"{self.desc}: {self.n}/{self.total} {self.unit}s{where}, {rate:.2f} {self.unit}/s, "
                  f"elapsed {tqdm.format_interval(elapsed)}, ETA {eta}", file=self.stream, flush=True)
        except (OSError, ValueError):  # progress is a courtesy: a closed or full stderr must not end the run
            pass

    def close(self) -> None:
        self.bar.close()
