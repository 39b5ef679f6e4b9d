#!/usr/bin/env python3
"""Vendor the part of PagerDuty's OpenAPI description (and the webhook examples) the tests read.

    .venv/bin/python scripts/vendor_openapi.py [--shared DIR] [--source FILE] [--check]

Reads ``DIR/reference/pagerduty-openapi/REST/openapiv3.json`` (``DIR`` defaults to
``../shared`` beside the repository) and writes ``tests/support/reference/``:

* ``pagerduty-openapi/openapiv3.json``: every path item whose template is a route the
  PagerDuty sandbox serves (the only PagerDuty the tests talk to, so every request and
  answer the suite validates is on one of those routes), all of its operations, and the
  components they reach through ``$ref``, transitively; everything copied verbatim,
  written with sorted keys so a rerun on the same input gives the same bytes;
* ``pagerduty-webhook-examples/``: the examples listed in ``tests/support/reference.py``;
* ``README.md``: where each file comes from, its version, and the licence situation.

``--check`` writes nothing and exits 1 if the committed files differ from what this
run would write (after PagerDuty's file is updated, or a sandbox route is added).
Runs in the project's venv: it imports the sandbox to read its route table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import textwrap
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# The route table and the examples list are read from the project itself (one source of
# truth), so the repository root must be importable however the script is started.
sys.path.insert(0, str(REPO))

from tests.support.reference import (  # noqa: E402
    OPENAPI_PATH,
    REFERENCE_DIR,
    WEBHOOK_EXAMPLES,
    WEBHOOK_EXAMPLES_DIR,
)

SOURCE_REL = Path("reference/pagerduty-openapi/REST/openapiv3.json")
EXAMPLES_REL = Path("reference/pagerduty-webhook-examples")
UPSTREAM = "https://github.com/PagerDuty/api-schema"
UPSTREAM_PATH = "reference/REST/openapiv3.json"
# The upstream commit of the file in shared/ (shared/reference/pagerduty-notes.md,
# "Provenance of the OpenAPI files"), keyed by the file's sha256: the commit cannot be
# read from the file, so a different file needs --source-commit/--source-date.
KNOWN_SOURCES = {
    "b2e80f8b83b170f29702e96a69adf230702b4ec43dddab7e348a2985c707ef35": (
        "91a06fb3c64b0ab2b2bd6c485d12b327dfb55c18",
        "2026-08-14",
    ),
}
# Sandbox routes PagerDuty's current file no longer describes; the sandbox keeps them
# behind a flag and the tests never validate them against the file.
NOT_IN_SOURCE = {"/response_plays", "/response_plays/{}", "/response_plays/{}/run"}
# The test support edits these components (tests/support/openapi.py, "allowances"):
# the subset must carry them or every validation would fail to load.
REQUIRED_COMPONENTS = {
    ("schemas", "AcknowledgeLogEntry"),
    ("schemas", "Channel"),
    ("schemas", "Incident"),
    ("schemas", "IncidentBody"),
}
METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


def _template(path: str) -> str:
    """``/incidents/{id}/notes/{note_id}`` -> ``/incidents/{}/notes/{}``: parameter names differ between the two."""
    return re.sub(r"\{[^}]*\}", "{}", path)


def sandbox_templates() -> set[str]:
    try:
        from dutybridge_sandbox.pagerduty.app import routes
    except ImportError as exc:
        sys.exit(
            f"cannot import the sandbox ({exc}): run this with the project's venv, "
            f".venv/bin/python {Path(__file__).relative_to(REPO)}"
        )
    return {_template(route.path) for route in routes}


def _pointer_target(ref: str) -> tuple[str, str]:
    """``#/components/schemas/Tag/allOf/0`` -> ``("schemas", "Tag")``: deep references keep the whole component."""
    if not ref.startswith("#/components/"):
        raise SystemExit(f"unsupported $ref {ref!r}: only references inside the document are handled")
    parts = [p.replace("~1", "/").replace("~0", "~") for p in ref[len("#/components/") :].split("/")]
    return parts[0], parts[1]


def subset(spec: dict, templates: set[str]) -> dict:
    paths = {p: item for p, item in spec["paths"].items() if _template(p) in templates}
    missing = templates - NOT_IN_SOURCE - {_template(p) for p in paths}
    if missing:
        raise SystemExit(f"sandbox routes PagerDuty's file does not describe: {sorted(missing)}")

    components = spec["components"]
    reached: set[tuple[str, str]] = set()
    todo: list[Any] = [paths]
    while todo:
        node = todo.pop()
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str):
                key = _pointer_target(ref)
                if key not in reached:
                    reached.add(key)
                    todo.append(components[key[0]][key[1]])
            todo.extend(node.values())
        elif isinstance(node, list):
            todo.extend(node)
    lost = REQUIRED_COMPONENTS - reached
    if lost:
        raise SystemExit(f"the subset lost components the test support edits: {sorted(lost)}")

    out_components: dict[str, dict] = {"securitySchemes": components["securitySchemes"]}
    for kind, name in reached:
        out_components.setdefault(kind, {})[name] = components[kind][name]
    used_tags = {
        tag for item in paths.values() for method, op in item.items() if method in METHODS for tag in op.get("tags", [])
    }
    out = {key: spec[key] for key in ("openapi", "info", "servers", "security") if key in spec}
    out["tags"] = [tag for tag in spec.get("tags", []) if tag.get("name") in used_tags]
    out["paths"] = paths
    out["components"] = out_components
    return out


def dump(doc: Any) -> bytes:
    # indent=1: a regenerated file diffs line by line, at a third more bytes than compact.
    return (json.dumps(doc, sort_keys=True, indent=1, ensure_ascii=False) + "\n").encode("utf-8")


def _latest_changelog_entry(shared: Path) -> str | None:
    changelog = shared / "reference/pagerduty-openapi/CHANGELOG.md"
    if not changelog.is_file():
        return None
    match = re.search(r"^### (\d{4}-\d{2}-\d{2})", changelog.read_text(encoding="utf-8"), re.M)
    return match.group(1) if match else None


def _wrap(paragraph: str) -> str:
    indent = "  " if paragraph.startswith("- ") else ""
    return textwrap.fill(paragraph, width=88, subsequent_indent=indent, break_long_words=False, break_on_hyphens=False)


def readme(
    spec: dict,
    doc: dict,
    source_sha: str,
    source_size: int,
    commit: str,
    date: str,
    changelog: str | None,
    out_bytes: bytes,
) -> bytes:
    operations = sum(1 for item in doc["paths"].values() for m in item if m in METHODS)
    all_operations = sum(1 for item in spec["paths"].values() for m in item if m in METHODS)
    counts = ", ".join(f"{len(v)} {k}" for k, v in sorted(doc["components"].items()))
    latest = f"; latest CHANGELOG entry {changelog}" if changelog else ""
    blocks = [
        "# Vendored PagerDuty reference files (test fixtures)",
        "Generated by `scripts/vendor_openapi.py`; do not edit by hand, rerun the script (`--check` "
        "tells whether these files are current). Only the tests read these files; they are not part "
        "of the installed package.",
        "## pagerduty-openapi/openapiv3.json",
        "\n".join(
            _wrap(item)
            for item in (
                f"- Source: PagerDuty's REST API v2 OpenAPI description, {UPSTREAM}, file `{UPSTREAM_PATH}`, "
                f"commit {commit} ({date}); {source_size:,} bytes, sha256 {source_sha}.",
                f'- Version: OpenAPI {spec.get("openapi")}, `info.version` "{spec["info"].get("version")}" '
                f"(PagerDuty does not bump it per release){latest}.",
                f"- Subset: the {len(doc['paths'])} path items (of {len(spec['paths'])}) whose template is a "
                f"route the PagerDuty sandbox serves, all {operations} of their operations (of "
                f"{all_operations}), and every component they reach through `$ref` ({counts}); copied "
                f"verbatim, keys sorted; {len(out_bytes):,} bytes.",
                "- The test support (`tests/support/openapi.py`) applies its documented allowances when it "
                "loads the file; the file here is PagerDuty's text unchanged.",
            )
        ),
        "## pagerduty-webhook-examples/",
        "Example payloads printed in PagerDuty's developer documentation "
        "(https://developer.pagerduty.com/docs/webhooks), copied byte for byte from the project's "
        "reference folder (`shared/reference/pagerduty-webhook-examples/`); the page of each:",
        "\n".join(_wrap(f"- `{name}`: {page}") for name, page in WEBHOOK_EXAMPLES.items()),
        "## Licence",
        f"PagerDuty, Inc. owns these files. Neither {UPSTREAM} nor the copy they were taken from carries "
        "a LICENSE file or a licence statement (the OpenAPI `info` has none either); PagerDuty "
        "publishes the description for import into API tools. They are kept here only as test "
        "fixtures, in the smallest part the tests need.",
    ]
    text = "\n\n".join(b if b.startswith(("#", "- ")) else _wrap(b) for b in blocks) + "\n"
    return text.encode("utf-8")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--shared",
        type=Path,
        default=REPO.parent / "shared",
        help="the project's shared/ folder (default: ../shared beside the repository)",
    )
    parser.add_argument(
        "--source",
        type=Path,
        help=f"PagerDuty's full OpenAPI file, if not at DIR/{SOURCE_REL} "
        f"(in a PagerDuty/api-schema checkout: {UPSTREAM_PATH})",
    )
    parser.add_argument("--source-commit", help="upstream commit of a source file not in KNOWN_SOURCES")
    parser.add_argument("--source-date", help="date (YYYY-MM-DD) of --source-commit")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if the vendored files are stale")
    args = parser.parse_args(argv)

    source = args.source or args.shared / SOURCE_REL
    if not source.is_file():
        parser.error(f"{source} not found: give --shared DIR (the folder holding {SOURCE_REL}) or --source FILE")
    examples = args.shared / EXAMPLES_REL
    if not all((examples / name).is_file() for name in WEBHOOK_EXAMPLES):
        parser.error(f"{examples} lacks some of {', '.join(WEBHOOK_EXAMPLES)}: give --shared DIR")
    raw = source.read_bytes()
    sha = hashlib.sha256(raw).hexdigest()
    commit, date = KNOWN_SOURCES.get(sha, (args.source_commit, args.source_date))
    if not commit or not date:
        parser.error(
            f"{source} (sha256 {sha}) is not a file this script knows the upstream commit of: "
            "give --source-commit and --source-date"
        )

    spec = json.loads(raw)
    doc = subset(spec, sandbox_templates())
    spec_bytes = dump(doc)
    outputs: dict[Path, bytes] = {OPENAPI_PATH: spec_bytes}
    for name in WEBHOOK_EXAMPLES:
        outputs[WEBHOOK_EXAMPLES_DIR / name] = (examples / name).read_bytes()
    outputs[REFERENCE_DIR / "README.md"] = readme(
        spec, doc, sha, len(raw), commit, date, _latest_changelog_entry(args.shared), spec_bytes
    )

    stale = [path for path, data in outputs.items() if not path.is_file() or path.read_bytes() != data]
    if args.check:
        for path in stale:
            print(f"stale: {path.relative_to(REPO)}", file=sys.stderr)
        return 1 if stale else 0
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(outputs[path])
        print(f"wrote {path.relative_to(REPO)} ({len(outputs[path]):,} bytes)")
    if not stale:
        print("vendored files are up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
