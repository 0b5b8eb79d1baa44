"""The documentation site builds with `mkdocs build --strict` (no broken link, anchor or page left
out of the navigation), and its generated pages name every error code, every setting, every CLI
command, every metric and every OpenAPI operation the code has, on the page that documents it."""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    # The settings page shows the defaults whatever this process's WALLET_* variables say.
    env["WALLET_PAGE_SIZE_DEFAULT"] = "7"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return out


def text_of(site: Path, page: str) -> str:
    """A built page's text, tags removed and entities decoded, whitespace made single spaces."""
    raw = (site / page / "index.html").read_text(encoding="utf-8")
    raw = raw.split('<article class="md-content__inner', 1)[1]  # the page, not the navigation
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", raw)).split())


def test_every_error_code_is_on_the_errors_page_with_its_status(site: Path) -> None:
    from wallet.api.error_response import STATUS_BY_CODE
    from wallet.domain.errors import CATALOGUE

    page = text_of(site, "api/errors")
    assert len(CATALOGUE) >= 40
    for code in CATALOGUE.values():
        assert f"{code.code} {STATUS_BY_CODE[code]} {code.meaning.split()[0]}" in page, code.code


def test_every_setting_is_on_the_configuration_page_with_its_default(site: Path) -> None:
    from wallet.settings import Settings

    page = text_of(site, "operations/configuration")
    for name in Settings.model_fields:
        assert f"WALLET_{name.upper()}" in page, name
    assert "WALLET_PAGE_SIZE_DEFAULT int 50 " in page  # the default, not this process's 7
    assert "WALLET_PORT int 8000 ≥ 1, ≤ 65,535" in page


def test_every_cli_command_and_option_is_on_the_cli_page(site: Path) -> None:
    from tools.docs_gen import cli_commands

    page = text_of(site, "operations/cli")
    commands = cli_commands()
    names = {path for path, _ in commands}
    assert {"wallet serve", "wallet migrate", "wallet keys create", "wallet report liabilities"} <= names
    assert "--version" in page
    for path, command in commands:
        assert path in page, path
        for param in command.params:
            for opt in getattr(param, "opts", []):
                if opt.startswith("--"):
                    assert opt in page, (path, opt)


def test_every_metric_is_on_the_monitoring_page(site: Path) -> None:
    from tools.docs_gen import metrics_rows

    page = text_of(site, "operations/monitoring")
    rows = metrics_rows()
    assert {"wallet_postings_total", "wallet_http_responses_total", "wallet_ledger_consistent"} <= {
        r[0] for r in rows
    }
    for name, *_ in rows:
        assert name in page, name


def test_every_operation_is_in_the_openapi_reference_and_the_spec_is_served(site: Path) -> None:
    import json

    from tools.docs_gen import openapi

    page = text_of(site, "api/reference")
    spec = json.loads((site / "api" / "openapi.json").read_text(encoding="utf-8"))
    assert spec == json.loads(json.dumps(openapi()))
    for path, item in spec["paths"].items():
        for method in item:
            assert f"{method.upper()} {path}" in page, (method, path)
    for schema in spec["components"]["schemas"]:
        assert schema in page, schema


def test_every_operation_has_a_section_in_the_api_guide(site: Path) -> None:
    from tools.docs_gen import openapi

    guide = " ".join(
        text_of(site, f"api/{page}") for page in ("transactions", "holds", "wallets", "reports", "events")
    )
    for path, item in openapi()["paths"].items():
        for method in item:
            assert f"{method.upper()} {path}" in guide, (method, path)


def test_the_navigation_lists_the_sections_of_the_issue(site: Path) -> None:
    for page in (
        "getting-started",
        "concepts/double-entry",
        "concepts/accounts",
        "concepts/lots",
        "concepts/holds",
        "concepts/idempotency",
        "concepts/events",
        "api",
        "api/errors",
        "api/reference",
        "operations/configuration",
        "operations/cli",
        "operations/deployment",
        "operations/cluster",
        "operations/backups",
        "operations/monitoring",
        "design",
        "design/concurrency",
        "design/invariants",
        "performance",
        "PERFORMANCE",
        "clients",
    ):
        assert (site / page / "index.html").is_file(), page


def test_the_readme_is_short_and_its_links_into_the_site_resolve() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 200
    targets = re.findall(r"\]\(((?:docs/)[^)#\s]+)(?:#[^)]*)?\)", readme)
    assert len(targets) >= 10
    for target in targets:
        assert (ROOT / target).exists(), target
