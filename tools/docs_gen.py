"""The generated parts of the documentation site, read from the code they describe so they cannot
drift from it: the error catalogue (wallet.domain.errors with the statuses of wallet.api.error_response),
the configuration (every field of wallet.settings.Settings), the CLI (the Typer app's command
tree), the metrics (the Prometheus registry once the application is built) and the HTTP reference
(the application's own OpenAPI document).

`tools/docs_hooks.py` (the `hooks:` of mkdocs.yml) calls `render(name, argument)` for every
`<!-- generated: name argument -->` marker in a page, at build time. Run this module to print one
part: `python -m tools.docs_gen errors` (or settings, cli, metrics, openapi, operation 'POST
/api/v1/transactions/topup', openapi-json).
"""

from __future__ import annotations

import inspect
import json
import re
import sys
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

import annotated_types
import typer
from fastapi import FastAPI
from prometheus_client import REGISTRY

HTTP_METHODS = ("get", "put", "post", "patch", "delete", "head", "options")


def _cell(text: object) -> str:
    """Text fit for one cell of a Markdown table."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _code(text: object) -> str:
    return f"`{text}`" if str(text) else ""


# -- the application ---------------------------------------------------------------------------


def default_settings() -> Any:
    """The settings as shipped: defaults only, whatever WALLET_* variables this process has."""
    from wallet.settings import Settings

    return Settings(_env_prefix="WALLET_DOCS_DEFAULTS_", _env_file=None)


@lru_cache(maxsize=1)
def application() -> FastAPI:
    """The service's FastAPI application with the default settings (no database is touched)."""
    from wallet.api.app import create_app

    return create_app(default_settings())


@lru_cache(maxsize=1)
def openapi() -> dict[str, Any]:
    spec: dict[str, Any] = application().openapi()
    return spec


def openapi_json() -> str:
    return json.dumps(openapi(), indent=2, ensure_ascii=False) + "\n"


# -- errors ------------------------------------------------------------------------------------


def error_catalogue() -> list[tuple[str, int, str, str | None, bool]]:
    """(code, HTTP status, meaning, field, success) for every code, in the catalogue's order."""
    from wallet.api.error_response import STATUS_BY_CODE
    from wallet.domain.errors import CATALOGUE

    return [(c.code, STATUS_BY_CODE[c], c.meaning, c.field, c.success) for c in CATALOGUE.values()]


def errors_md() -> str:
    from wallet.api.errors import _STATUS_TITLES

    rows = error_catalogue()
    out = [
        "| Code | Status | Meaning | Field it names |",
        "| --- | ---: | --- | --- |",
    ]
    for code, status, meaning, field, success in sorted(rows, key=lambda r: (r[1], r[0])):
        kind = " (outcome, not an error)" if success else ""
        anchor = f'<span id="{code}"></span>'
        out.append(f"| {anchor}`{code}` | {status} | {_cell(meaning)}{kind} | {_code(field or '')} |")
    out += ["", "What each error status means to a caller:", ""]
    out += ["| Status | Meaning | Codes |", "| ---: | --- | --- |"]
    for status, title in sorted(_STATUS_TITLES.items()):
        codes = ", ".join(f"[`{r[0]}`](#{r[0]})" for r in rows if r[1] == status)
        out.append(f"| {status} | {_cell(title)} | {codes} |")
    return "\n".join(out) + "\n"


# -- settings ----------------------------------------------------------------------------------


def _field_comments() -> dict[str, str]:
    """The comment block that introduces each field in settings.py. A field with none directly
    above it, in the paragraph (up to a blank line) of a field that has one, is covered by that
    comment: it gets a pointer to that field."""
    import wallet.settings

    source = inspect.getsource(wallet.settings.Settings).splitlines()
    comments: dict[str, str] = {}
    block: list[str] = []
    owner = ""
    for line in source:
        stripped = line.strip()
        if not stripped:
            block, owner = [], ""
        elif stripped.startswith("#"):
            block.append(stripped.lstrip("#").strip())
        else:
            match = re.match(r"(\w+)\s*:", stripped)
            if not match or not line.startswith("    ") or line.startswith("     "):
                continue
            name = match.group(1)
            if block:
                comments[name], block, owner = " ".join(block), [], name
            elif owner:
                env = f"WALLET_{owner.upper()}"
                comments[name] = f"See [`{env}`](#{env})."
    return comments


# For the fields whose comment in settings.py introduces another field of their paragraph.
SETTING_NOTES = {
    "data_dir": "The embedded PostgreSQL's data folder, when `WALLET_DATABASE_URL` is unset.",
    "host": "The address `wallet serve` listens on (`--host` overrides it).",
    "port": "The port `wallet serve` listens on (`--port` overrides it).",
    "db_statement_timeout_ms": "Longest one statement of a request may run; past it the request gets "
    "503 `busy` and nothing is written.",
    "db_idle_in_transaction_timeout_ms": "A session idle inside a transaction this long is ended by "
    "the database.",
    "db_connect_timeout_ms": "Longest a new database connection may take.",
    "max_amount_minor": "Largest amount (minor units) of one operation; tighter than the hard ceiling.",
    "max_body_bytes": "Largest request body; more is 413 `body_too_large`.",
    "max_metadata_bytes": "Largest `metadata` object, as JSON bytes.",
    "max_description_chars": "Longest `description` (and reversal `reason`).",
    "max_idempotency_key_chars": "Longest idempotency key.",
    "max_batch_operations": "Most operations in one batch.",
    "page_size_max": "Largest `limit` a list accepts.",
    "redis_url": "The Redis server of the rate-limit store when `WALLET_RATE_LIMIT_STORE=redis`.",
    "log_level": "Log level: DEBUG, INFO, WARNING, ERROR or CRITICAL (any case).",
    "log_json": "Log lines as JSON (one object a line) instead of key=value text.",
    "db_startup_parameters": "Send the session settings (`lock_timeout` and the others) when "
    "connecting; false behind pgbouncer in transaction mode, after `wallet role-settings` stored "
    "them on the role.",
    "direct_database_url": "The database itself, not through a transaction-mode pooler, for what "
    "holds a session lock (migrations, the webhook deliverer, the audit's turn). Unset: "
    "`WALLET_DATABASE_URL`.",
}


def _limits(metadata: list[Any]) -> str:
    parts = []
    for item in metadata:
        for attr, sign in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            value = getattr(item, attr, None)
            if value is not None and isinstance(item, annotated_types.BaseMetadata):
                parts.append(f"{sign} {value:,}" if isinstance(value, int) else f"{sign} {value}")
        if isinstance(item, annotated_types.MinLen):
            parts.append(f"at least {item.min_length} characters")
    return ", ".join(parts)


def _type_name(annotation: Any) -> str:
    text = str(annotation) if not isinstance(annotation, type) else annotation.__name__
    text = re.sub(r"<class '([\w.]+)'>", r"\1", text)
    text = text.replace("pathlib.", "").replace("wallet.settings.", "").replace("typing.", "")
    return text


def settings_rows() -> list[tuple[str, str, str, str, str]]:
    """(environment variable, type, default, limits, description) for every setting."""
    from wallet.settings import Settings

    defaults = default_settings()
    comments = _field_comments()
    rows = []
    for name, field in Settings.model_fields.items():
        value = getattr(defaults, name)
        if hasattr(value, "model_dump"):
            value = value.model_dump(mode="json")
        if isinstance(value, dict):
            value = json.dumps(
                {k: v.model_dump(mode="json", exclude_defaults=True) for k, v in value.items()}
                if all(hasattr(v, "model_dump") for v in value.values())
                else value
            )
        elif isinstance(value, Path):
            value = str(value)
        default = "unset" if value is None else str(value)
        description = field.description or SETTING_NOTES.get(name) or comments.get(name, "")
        rows.append(
            (
                f"WALLET_{name.upper()}",
                _type_name(field.annotation),
                default,
                _limits(list(field.metadata)),
                description,
            )
        )
    return rows


def settings_md() -> str:
    out = ["| Variable | Default | Limits | Meaning |", "| --- | --- | --- | --- |"]
    for env, type_name, default, limits, description in settings_rows():
        anchor = f'<span id="{env}"></span>'
        out.append(
            f"| {anchor}`{env}` <br>*{_cell(type_name)}* | `{_cell(default)}` | {_cell(limits)} "
            f"| {_cell(description)} |"
        )
    return "\n".join(out) + "\n"


# -- CLI ---------------------------------------------------------------------------------------


def cli_commands() -> list[tuple[str, Any]]:
    """(`wallet keys create`, command) for every command of the CLI, groups included. Typer brings
    its own copy of Click, so the tree is walked by what its objects do, not by their classes."""
    from wallet.cli import app

    root = typer.main.get_command(app)

    def walk(prefix: str, command: Any) -> Iterator[tuple[str, Any]]:
        yield prefix, command
        if hasattr(command, "list_commands"):
            ctx = command.context_class(command, info_name=prefix)
            for name in sorted(command.list_commands(ctx)):
                sub = command.get_command(ctx, name)
                if sub is not None and not sub.hidden:
                    yield from walk(f"{prefix} {name}", sub)

    return list(walk("wallet", root))


def cli_md() -> str:
    out: list[str] = []
    for path, command in cli_commands():
        ctx = command.context_class(command, info_name=path)
        usage = " ".join(command.collect_usage_pieces(ctx))
        out += [f"### `{path}`", "", "```", f"{path} {usage}".rstrip(), "```", ""]
        help_text = inspect.cleandoc(command.help or "")
        if path == "wallet":
            help_text = help_text.split("\n\n")[0]  # the module docstring's summary
        out += [help_text, ""] if help_text else []
        params = [p for p in command.params if p.name != "help"]
        if params:
            out += ["| Option or argument | Default | Meaning |", "| --- | --- | --- |"]
            for p in params:
                if p.param_type_name == "option":
                    names = " / ".join(p.opts + p.secondary_opts)
                    shown = re.sub(r"list\[(\w+)\]", r"\1", p.metavar or p.display_type(ctx))
                    shown = shown.replace("int range", "int")
                    metavar = "" if p.is_flag else f" {shown}"
                    empty = p.default is None or p.default == () or (p.is_flag and not p.default)
                    default = "required" if p.required else ("" if empty else _code(p.default))
                    if p.is_flag and p.secondary_opts and p.default is not None:
                        default = _code(p.opts[0] if p.default else p.secondary_opts[0])
                    repeat = " (repeatable)" if p.multiple else ""
                    low, high = getattr(p, "min", None), getattr(p, "max", None)
                    bounds = [f"at least {low}"] if low is not None else []
                    bounds += [f"at most {high}"] if high is not None else []
                    meaning = (p.help or "") + (f" ({', '.join(bounds)})" if bounds else "")
                    out.append(f"| `{names}{metavar}`{repeat} | {default} | {_cell(meaning)} |")
                else:
                    out.append(
                        f"| `{(p.name or '').upper()}` | {'required' if p.required else ''} "
                        f"| {_cell(getattr(p, 'help', '') or '')} |"
                    )
            out.append("")
    return "\n".join(out)


# -- metrics -----------------------------------------------------------------------------------


def metrics_rows() -> list[tuple[str, str, str, str]]:
    """(name as scraped, type, labels, help) for every wallet_* metric the service registers."""
    application()  # importing the application registers every metric
    rows = []
    for collector in list(REGISTRY._collector_to_names):
        labels = ", ".join(getattr(collector, "_labelnames", ()))
        describe = getattr(collector, "describe", None)
        for family in describe() if describe is not None else []:
            if not family.name.startswith("wallet_"):
                continue
            name = family.name + ("_total" if family.type == "counter" else "")
            rows.append((name, family.type, labels, family.documentation))
    return sorted(rows)


def metrics_md() -> str:
    out = ["| Metric | Type | Labels | Meaning |", "| --- | --- | --- | --- |"]
    for name, kind, labels, documentation in metrics_rows():
        out.append(f"| `{name}` | {kind} | {_cell(labels)} | {_cell(documentation)} |")
    return "\n".join(out) + "\n"


# -- the HTTP reference ------------------------------------------------------------------------


def _schema_type(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f"[{name}](#{name.lower()})"
    if "anyOf" in schema or "oneOf" in schema:
        options = [s for s in schema.get("anyOf", schema.get("oneOf", [])) if s.get("type") != "null"]
        nullable = len(options) < len(schema.get("anyOf", schema.get("oneOf", [])))
        text = " or ".join(_schema_type(s) for s in options)
        return text + (" or null" if nullable else "")
    if "allOf" in schema:
        return " and ".join(_schema_type(s) for s in schema["allOf"])
    kind = schema.get("type", "any")
    if kind == "array":
        return f"array of {_schema_type(schema.get('items', {}))}"
    if "enum" in schema:
        return " \\| ".join(f"`{v}`" for v in schema["enum"])
    if "const" in schema:
        return f"`{schema['const']}`"
    if schema.get("format"):
        return f"{kind} ({schema['format']})"
    return str(kind)


def _constraints(schema: dict[str, Any]) -> str:
    parts = []
    options = [schema, *schema.get("anyOf", [])]
    for option in options:
        for key, text in (
            ("minimum", "≥"),
            ("exclusiveMinimum", ">"),
            ("maximum", "≤"),
            ("exclusiveMaximum", "<"),
            ("minLength", "length ≥"),
            ("maxLength", "length ≤"),
            ("minItems", "items ≥"),
            ("maxItems", "items ≤"),
        ):
            if key in option:
                value = option[key]
                parts.append(f"{text} {value:,}" if isinstance(value, int) else f"{text} {value}")
        if "pattern" in option:
            parts.append(f"pattern `{option['pattern']}`")
    if "default" in schema and schema["default"] is not None:
        parts.append(f"default `{json.dumps(schema['default'])}`")
    return ", ".join(parts)


def _operations() -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in openapi()["paths"].items():
        for method in HTTP_METHODS:
            if method in item:
                yield method.upper(), path, item[method]


def _codes_in(description: str) -> list[str]:
    return re.findall(r"`([a-z_]+)`:", description)


def operation_md(method: str, path: str, level: int = 4) -> str:
    """One operation: parameters, body, and every answer with the catalogue codes it carries."""
    found = [op for m, p, op in _operations() if m == method and p == path]
    if not found:
        raise KeyError(f"no operation {method} {path} in the OpenAPI document")
    op = found[0]
    hashes = "#" * level
    out = [f"{hashes} `{method} {path}`", ""]
    if op.get("summary"):
        out += [op["summary"].rstrip(".") + ".", ""]
    if op.get("description"):
        out += [inspect.cleandoc(op["description"]), ""]
    params = op.get("parameters", [])
    if params:
        out += ["| Parameter | In | Type | Constraints | Meaning |", "| --- | --- | --- | --- | --- |"]
        for p in params:
            schema = p.get("schema", {})
            required = " (required)" if p.get("required") else ""
            out.append(
                f"| `{p['name']}`{required} | {p['in']} | {_cell(_schema_type(schema))} "
                f"| {_cell(_constraints(schema))} | {_cell(p.get('description', ''))} |"
            )
        out.append("")
    body = op.get("requestBody")
    if body:
        schema = body.get("content", {}).get("application/json", {}).get("schema", {})
        out += [f"Body: {_schema_type(schema)} (JSON).", ""]
    out += ["| Status | Meaning | Codes |", "| ---: | --- | --- |"]
    for status, response in sorted(op.get("responses", {}).items()):
        description = response.get("description", "")
        codes = _codes_in(description)
        text = description.split(". Codes:")[0] if codes else description
        links = ", ".join(f"[`{c}`](errors.md#{c})" for c in codes)
        out.append(f"| {status} | {_cell(text)} | {links} |")
    return "\n".join(out) + "\n"


def openapi_md() -> str:
    """Every path, operation and schema of the OpenAPI document, as Markdown."""
    spec = openapi()
    out = [
        f"Version {spec['info'].get('version', '')} of *{spec['info'].get('title', '')}*,"
        f" {sum(1 for _ in _operations())} operations on {len(spec['paths'])} paths."
        " The document itself: [openapi.json](openapi.json).",
        "",
    ]
    by_tag: dict[str, list[tuple[str, str]]] = {}
    for method, path, op in _operations():
        by_tag.setdefault((op.get("tags") or ["other"])[0], []).append((method, path))
    for tag, operations in by_tag.items():
        out += [f"## {tag.capitalize()}", ""]
        for method, path in operations:
            out.append(operation_md(method, path, level=3))
    out += ["## Schemas", ""]
    for name, schema in sorted(spec.get("components", {}).get("schemas", {}).items()):
        out += [f"### {name}", ""]
        if schema.get("description"):
            out += [inspect.cleandoc(schema["description"]), ""]
        properties = schema.get("properties", {})
        if properties:
            required = set(schema.get("required", []))
            out += ["| Field | Type | Constraints | Meaning |", "| --- | --- | --- | --- |"]
            for field, sub in properties.items():
                mark = " (required)" if field in required else ""
                out.append(
                    f"| `{field}`{mark} | {_cell(_schema_type(sub))} | {_cell(_constraints(sub))} "
                    f"| {_cell(sub.get('description', ''))} |"
                )
            out.append("")
        elif "enum" in schema:
            out += ["One of: " + ", ".join(f"`{v}`" for v in schema["enum"]) + ".", ""]
    return "\n".join(out)


# -- entry points ------------------------------------------------------------------------------


def render(name: str, argument: str = "") -> str:
    if name == "errors":
        return errors_md()
    if name == "settings":
        return settings_md()
    if name == "cli":
        return cli_md()
    if name == "metrics":
        return metrics_md()
    if name == "openapi":
        return openapi_md()
    if name == "openapi-json":
        return openapi_json()
    if name == "operation":
        method, _, path = argument.partition(" ")
        # On an API guide page: its schemas are described on the reference page.
        return operation_md(method.upper(), path.strip()).replace("](#", "](reference.md#")
    raise ValueError(f"unknown generated part {name!r}")


def _check_notes() -> None:
    """SETTING_NOTES names only real settings (a renamed one must not keep a stale note)."""
    from wallet.settings import Settings

    stale = set(SETTING_NOTES) - set(Settings.model_fields)
    if stale:
        raise ValueError(f"SETTING_NOTES names settings that do not exist: {sorted(stale)}")


_check_notes()

if __name__ == "__main__":
    print(render(sys.argv[1], " ".join(sys.argv[2:])), end="")
