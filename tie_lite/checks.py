"""Value checks any layer may use: sizes, lengths, seeds, choices, user text, output files.

Each fails with a `UserError`: one line saying what was wrong and what to do. Nothing here imports the
project's other modules but errors.py, so the lowest layers can check their inputs with the faces' words.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

from tie_lite.errors import UserError

QUANTS = ("none", "8bit", "4bit")
BACKENDS = ("bitsandbytes", "quanto")
DEVICES = ("cpu", "cuda", "cuda:N", "auto")
DTYPES = ("auto", "float32", "bfloat16", "float16")
SEED_LIMIT = 2**64  # torch generators take seeds in [0, 2**64)
MAX_LENGTH = 1 << 20  # positions: far past any context, small enough that arithmetic on sizes stays finite
# No tokenizer spends fewer than one token on this many characters (a long run of one character merges into long
# tokens, but not this long): a prompt with more characters than its context times this cannot fit, and is refused
# before it is tokenized, so its length never costs memory or time.
CHARS_PER_TOKEN = 32


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def shown(text, limit: int = 40) -> str:
    """User text as it can be printed in one line (no lone surrogates, no control characters, bounded)."""
    text = str(text).encode("utf-8", "replace").decode("utf-8")
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def shown_path(path) -> str:
    """A file name the user gave, whole (they need it to find the file), printable in one line."""
    return shown(path, limit=1000)


def check_text(text, what: str = "the prompt") -> str:
    """A prompt or chat message: a string of valid Unicode (no lone surrogates, e.g. from invalid UTF-8 on
    the command line), not empty."""
    if not isinstance(text, str):
        raise UserError(f"{what} must be text")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise UserError(f"{what} is not valid UTF-8 text; re-type it or save it as UTF-8") from None
    if "\x00" in text:
        raise UserError(f"{what} contains a NUL character; remove it")
    if not text.strip():
        raise UserError(f"{what} is empty; pass some text, e.g. \"What is (23+41)*7?\"")
    return text


def check_seed(seed: int, flag: str = "--seed") -> int:
    if not 0 <= seed < SEED_LIMIT:
        raise UserError(f"{flag} {seed} is outside 0..2**64-1; pass a smaller non-negative whole number")
    return seed


def check_lengths(lengths: dict[str, int | None]) -> None:
    """{flag: positions}: none of them past MAX_LENGTH (None: not given)."""
    for flag, value in lengths.items():
        if value is not None and value > MAX_LENGTH:
            raise UserError(f"{flag} {value} is far beyond any model's context; use at most {MAX_LENGTH}")


def check_choice(value, choices, flag: str) -> str:
    if value not in choices:
        raise UserError(f"unknown {flag} '{shown(value)}'; use one of {', '.join(choices)}")
    return value


def check_output(path: str | None, formats: tuple[str, ...], flag: str) -> None:
    """A file the run will write at the end: its folder must exist and be writable and its extension known,
    checked before the run so that no result is lost at the end."""
    if path is None:
        return
    p = Path(path).expanduser()
    ext = p.suffix.lower().lstrip(".")
    if ext not in formats:
        raise UserError(f"{flag} '{shown(path)}' has an unknown extension; end it with "
                        f"{' or '.join('.' + f for f in formats)}")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(f"{flag} '{shown(path)}': the folder {shown(parent)} does not exist; create it first")
    if p.is_dir() or not os.access(parent, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise UserError(f"{flag} '{shown(path)}' cannot be written; choose another file")


def check_device(device: str) -> str:
    if not re.fullmatch(r"cpu|cuda(:\d+)?|auto", device):
        raise UserError(f"unknown --device '{shown(device)}'; use one of {', '.join(DEVICES)}")
    return device


# --- sizes ---------------------------------------------------------------------------------------------

_UNITS = {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40,
          "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str | int | None, flag: str = "--max-memory") -> int | None:
    """'10GiB', '1.5GB', '600MB', '512M', '2000000' -> bytes. KiB/MiB/GiB and K/M/G are powers of 1024;
    KB/MB/GB powers of 1000. Anything else is a UserError naming the flag."""
    if text is None:
        return None
    if isinstance(text, int):
        value = text
    else:
        m = _SIZE.match(str(text))
        unit = m.group(2).lower() if m else None
        if m is None or unit not in _UNITS:
            raise UserError(f"{flag} '{text}' is not a size; write e.g. 10GiB, 1.5GB, 600MB or 512MiB")
        amount = float(m.group(1)) * _UNITS[unit]
        if not math.isfinite(amount) or amount >= 2**60:
            raise UserError(f"{flag} '{text}' is more memory than any machine has; write e.g. 10GiB")
        value = int(amount)
    if value >= 2**60:
        raise UserError(f"{flag} {text} is more memory than any machine has; write e.g. 10GiB")
    if value <= 0:
        raise UserError(f"{flag} must be more than zero bytes (got '{text}')")
    return value


def format_size(n: float) -> str:
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}" if abs(n) < 100 else f"{n:.0f} {unit}"
        n /= 1024
    return f"{n:.0f} B"
