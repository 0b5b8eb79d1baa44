"""MkDocs hooks (`hooks:` in mkdocs.yml): the generated parts of the site, made at build time.

A page asks for a part with a marker on a line of its own, `<!-- generated: errors -->` (or
settings, cli, metrics, openapi, `operation POST /api/v1/transactions/topup`); the marker is
replaced by what `tools.docs_gen.render` makes from the code. The site also gets `api/openapi.json`,
the service's own OpenAPI document. A marker naming an unknown part fails the build.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent.parent
for folder in (ROOT, ROOT / "src"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from tools import docs_gen  # noqa: E402  (after the path set-up: mkdocs loads this file by path)

MARKER = re.compile(r"^<!-- generated: ([a-z-]+)(?: (.*?))? -->$", re.MULTILINE)


def on_files(files: Files, config: Any) -> Files:
    files.append(File.generated(config, "api/openapi.json", content=docs_gen.openapi_json()))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    return MARKER.sub(lambda m: docs_gen.render(m.group(1), m.group(2) or "").rstrip("\n"), markdown)
