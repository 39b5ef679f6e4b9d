"""Small helpers: PagerDuty-looking ids, timestamps, query parsing, and the account's shared
vocabulary (email shape, user roles, the blank/taken name answers)."""

from __future__ import annotations

import os
import random
import re
import time
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

_ID_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


class IdGen:
    """PagerDuty-style ids ("P" + 6 uppercase alphanumerics; log entries "R" + 25).

    Seeded from the OS unless a seed is given (then a run is repeatable).
    """

    def __init__(self, seed: int | None = None):
        self.rng = random.Random(seed if seed is not None else int.from_bytes(os.urandom(16), "big"))
        self.used: set[str] = set()

    def new(self, prefix: str = "P", length: int = 7) -> str:
        digits = length - len(prefix)
        bits = digits * 6  # 36**k < 2**(6k): enough randomness for k base-36 digits
        getrandbits = self.rng.getrandbits
        while True:
            n = getrandbits(bits)
            chars = []
            for _ in range(digits):
                n, r = divmod(n, 36)
                chars.append(_ID_CHARS[r])
            candidate = prefix + "".join(chars)
            if candidate not in self.used:
                self.used.add(candidate)
                return candidate

    def hex(self, n: int = 32) -> str:
        return "%0*x" % (n, self.rng.getrandbits(n * 4))

    def uuid(self) -> str:
        h = self.hex(32)
        return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:32]}"


def iso(ts: float) -> str:
    """Epoch seconds -> ``2024-01-01T00:00:00Z`` (PagerDuty's REST format)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def iso_ms(ts: float) -> str:
    """Epoch seconds -> ``2024-01-01T00:00:00.123Z`` (webhook ``occurred_at``)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + ".%03dZ" % int((ts % 1) * 1000)


@lru_cache(maxsize=1024)
def parse_time(value: str) -> float:
    """An ISO 8601 date or date-time (``Z`` or offset; naive means UTC) -> epoch seconds."""
    text = value.strip()
    if not text:
        raise ValueError("empty time")
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    dt = datetime.fromisoformat(text.replace(" ", "T", 1) if "T" not in text and len(text) > 10 else text)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def truthy(value: str | None) -> bool:
    return value is not None and value.strip().lower() in ("true", "1", "yes")


# --------------------------------------------------------- account vocabulary

EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")

USER_ROLES = (
    "admin",
    "limited_user",
    "observer",
    "owner",
    "read_only_user",
    "restricted_access",
    "read_only_limited_user",
    "user",
)
# Base roles that may look but not act on incidents (Observer and the stakeholder roles).
READ_ONLY_ROLES = frozenset({"observer", "read_only_user", "read_only_limited_user"})


def name_errors(name: Any, existing: dict, own_id: str | None) -> list[str]:
    """PagerDuty's answers for a name that is blank or taken by another object of the kind."""
    if not isinstance(name, str) or not name.strip():
        return ["Name can't be blank"]
    if any(o["name"].lower() == name.lower() and o["id"] != own_id for o in existing.values()):
        return ["Name has already been taken"]
    return []
