"""`data/manifest.json`: what the prepare stage made (cache key, per-task counts and selection
reports), read without Ray by the report and the CLI."""

from __future__ import annotations

import json

from engine.core.rundir import RunDir

MANIFEST_VERSION = 2


def read_manifest(run: RunDir) -> dict | None:
    if not run.manifest.is_file():
        return None
    manifest = json.loads(run.manifest.read_text())
    return manifest if manifest.get("version") == MANIFEST_VERSION else None
