"""Where the tests' vendored PagerDuty reference files live, and the check that they are there.

The files under ``tests/support/reference/`` are produced by ``scripts/vendor_openapi.py``
(sources, versions and licence in ``tests/support/reference/README.md``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = [
    "OPENAPI_PATH",
    "REFERENCE_DIR",
    "REGENERATE",
    "WEBHOOK_EXAMPLES",
    "WEBHOOK_EXAMPLES_DIR",
    "missing_files",
    "webhook_example",
]

REFERENCE_DIR = Path(__file__).resolve().parent / "reference"
OPENAPI_PATH = REFERENCE_DIR / "pagerduty-openapi" / "openapiv3.json"
WEBHOOK_EXAMPLES_DIR = REFERENCE_DIR / "pagerduty-webhook-examples"

# The webhook payload examples the tests compare the sandbox's deliveries with, and the
# page of PagerDuty's developer documentation each one is printed on; the script copies
# exactly these (the tests need nothing else from the examples folder).
WEBHOOK_EXAMPLES = {
    "pd-v2-webhook-incident.trigger.json": "Webhooks > V2 Overview",
    "pd-v3-create-subscription-request.json": "Webhooks > Overview (V3), creating a subscription",
    "pd-v3-incident.priority_updated.json": "Webhooks > Overview (V3), event payload",
}

REGENERATE = (
    "restore them with `git checkout -- tests/support/reference` or regenerate them with "
    "`.venv/bin/python scripts/vendor_openapi.py --shared DIR` (DIR: the project's shared/ folder, "
    "with PagerDuty's full file in reference/pagerduty-openapi/REST/)"
)


def missing_files() -> list[Path]:
    """The vendored files the suite reads that are not on disk (an empty list when all are)."""
    wanted = [OPENAPI_PATH, *(WEBHOOK_EXAMPLES_DIR / name for name in WEBHOOK_EXAMPLES)]
    return [path for path in wanted if not path.is_file()]


def webhook_example(name: str) -> Any:
    """One of :data:`WEBHOOK_EXAMPLES`, parsed."""
    if name not in WEBHOOK_EXAMPLES:
        raise ValueError(f"{name!r} is not vendored: add it to WEBHOOK_EXAMPLES and rerun the vendoring script")
    return json.loads((WEBHOOK_EXAMPLES_DIR / name).read_text(encoding="utf-8"))
