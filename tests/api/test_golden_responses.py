"""Every route answers byte for byte as recorded (status, headers, body): the proof that a
refactoring of the request path (issue 19: one path per route, checks in one place) changed no
answer.

A fixed scenario of requests runs against a fresh database through the real ASGI app; each answer
is compared with `golden_responses.json`, recorded on the code before the change. What differs
from run to run is replaced before comparing, the same way on both sides: generated ids (UUIDs,
numbered by first appearance), times, days, webhook secrets, and the Prometheus text of
/metrics (its status and headers are still compared). A body's Content-Length is checked against
the body itself. Record again with WALLET_GOLDEN_RECORD=1 (then review the diff of the file: any
change in it is a change of the public interface).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from wallet.api.app import create_app
from wallet.db.migrate import upgrade_to_head_async
from wallet.domain.rules import KeyOperation
from wallet.services.api_keys import KeyRestrictions, RateLimitOverride, create_api_key
from wallet.services.seed import seed_reference_data
from wallet.settings import Settings

GOLDEN = Path(__file__).with_name("golden_responses.json")
RECORD = os.environ.get("WALLET_GOLDEN_RECORD") == "1"

A = "golden_alice"
B = "golden_bob"
C = "golden_carol"

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})?")
_DAY = re.compile(r"\b\d{4}-\d{2}-\d{2}\b")
_SECRET = re.compile(r'"secret":"[^"]*"')
# Event cursors carry the writing transaction's id (wallet.services.events): new each run.
_EVENT_CURSOR = re.compile(r'"(next_cursor|cursor)":"[A-Za-z0-9_-]+"')
_REQUEST_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass
class Case:
    name: str
    method: str
    path: str
    key: str | None = "all"
    json: Any = None
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    idem: str | None = None  # the Idempotency-Key header
    body_kept: bool = True  # False: compare status and headers only (the Prometheus text)


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return {"a": value}


def _cases() -> list[Case]:
    """The scenario. `{name}` in a path is the `id` of the answer of the case called `name`."""
    big = "x" * 20_000
    topup = {"user_id": A, "asset_type": "GOLD_COINS", "amount": 100}
    json_type = {"Content-Type": "application/json"}
    cases = [
        Case("health", "GET", "/health", key=None),
        Case("openapi", "GET", "/openapi.json", key=None),
        Case("docs", "GET", "/docs", key=None),
        Case("redoc", "GET", "/redoc", key=None),
        Case("console", "GET", "/console", key=None),
        Case("console_js", "GET", "/console/assets/console.js", key=None),
        Case("console_missing", "GET", "/console/assets/nope.js", key=None),
        Case("metrics", "GET", "/metrics", key=None, body_kept=False),
        Case("no_route", "GET", "/api/v1/nope"),
        Case("wrong_method", "GET", "/api/v1/transactions/topup"),
        Case("trailing_slash", "POST", "/api/v1/transactions/topup/", json=topup, idem="g-slash"),
        Case("head_on_post_route", "HEAD", "/api/v1/transactions/topup"),
        # users
        Case("user_a", "POST", "/api/v1/users", key="admin", json={"user_id": A, "name": "Alice"}),
        Case("user_a_again", "POST", "/api/v1/users", key="admin", json={"user_id": A, "name": "Alice"}),
        Case("user_a_other", "POST", "/api/v1/users", key="admin", json={"user_id": A, "name": "Eve"}),
        Case("user_b", "POST", "/api/v1/users", key="admin", json={"user_id": B, "name": "Bob"}),
        Case("user_c", "POST", "/api/v1/users", key="admin", json={"user_id": C, "name": "Carol"}),
        Case("user_not_admin", "POST", "/api/v1/users", json={"user_id": "golden_x", "name": "X"}),
        Case("user_no_key", "POST", "/api/v1/users", key=None, json={"user_id": "golden_x", "name": "X"}),
        Case(
            "user_reserved",
            "POST",
            "/api/v1/users",
            key="admin",
            json={"user_id": "SYSTEM_TREASURY", "name": "X"},
        ),
        Case("user_dots", "POST", "/api/v1/users", key="admin", json={"user_id": "..", "name": "X"}),
        Case("user_blank", "POST", "/api/v1/users", key="admin", json={"user_id": "golden_x", "name": "  "}),
        Case(
            "user_extra",
            "POST",
            "/api/v1/users",
            key="admin",
            json={"user_id": "golden_x", "name": "X", "age": 3},
        ),
        Case("user_array", "POST", "/api/v1/users", key="admin", json=[1]),
        Case("user_malformed", "POST", "/api/v1/users", key="admin", content=b"{", headers=json_type),
        Case(
            "user_text_plain",
            "POST",
            "/api/v1/users",
            key="admin",
            content=b"{}",
            headers={"Content-Type": "text/plain"},
        ),
        Case("users_page", "GET", "/api/v1/users?limit=2"),
        Case("users_limit_0", "GET", "/api/v1/users?limit=0"),
        Case("users_limit_abc", "GET", "/api/v1/users?limit=abc"),
        Case("users_bad_cursor", "GET", "/api/v1/users?cursor=zzz"),
        Case("asset_types", "GET", "/api/v1/asset-types"),
        # top-ups: the hot route, its successes and every refusal
        Case(
            "topup",
            "POST",
            "/api/v1/transactions/topup",
            json=topup,
            idem="g-topup-1",
            headers={"X-Request-ID": "golden-1"},
        ),
        Case("topup_replay", "POST", "/api/v1/transactions/topup", json=topup, idem="g-topup-1"),
        Case("topup_replay_quoted", "POST", "/api/v1/transactions/topup", json=topup, idem='"g-topup-1"'),
        Case(
            "topup_reused",
            "POST",
            "/api/v1/transactions/topup",
            json={**topup, "amount": 5},
            idem="g-topup-1",
        ),
        Case(
            "topup_body_key",
            "POST",
            "/api/v1/transactions/topup",
            json={**topup, "idempotency_key": "g-topup-body"},
        ),
        Case(
            "topup_both_keys",
            "POST",
            "/api/v1/transactions/topup",
            json={**topup, "idempotency_key": "g-topup-both"},
            idem="g-topup-both",
        ),
        Case(
            "topup_keys_differ",
            "POST",
            "/api/v1/transactions/topup",
            json={**topup, "idempotency_key": "g-one"},
            idem="g-two",
        ),
        Case("topup_no_key", "POST", "/api/v1/transactions/topup", json=topup),
        Case("topup_empty_key", "POST", "/api/v1/transactions/topup", json=topup, idem=""),
        Case("topup_unclosed_quote", "POST", "/api/v1/transactions/topup", json=topup, idem='"abc'),
        Case("topup_inner_quote", "POST", "/api/v1/transactions/topup", json=topup, idem='a"b'),
        Case("topup_after_quote", "POST", "/api/v1/transactions/topup", json=topup, idem='"a"b'),
        Case("topup_bad_escape", "POST", "/api/v1/transactions/topup", json=topup, idem='"a\\x"'),
        Case("topup_key_space", "POST", "/api/v1/transactions/topup", json=topup, idem="a b"),
        Case("topup_key_long", "POST", "/api/v1/transactions/topup", json=topup, idem="k" * 256),
        Case("topup_key_nonascii", "POST", "/api/v1/transactions/topup", json=topup, idem="clé"),
        Case(
            "topup_body_key_long",
            "POST",
            "/api/v1/transactions/topup",
            json={**topup, "idempotency_key": "k" * 256},
        ),
        Case(
            "topup_body_key_space",
            "POST",
            "/api/v1/transactions/topup",
            json={**topup, "idempotency_key": "a b"},
        ),
        Case(
            "topup_body_key_empty",
            "POST",
            "/api/v1/transactions/topup",
            json={**topup, "idempotency_key": ""},
        ),
        Case(
            "topup_amount_0", "POST", "/api/v1/transactions/topup", json={**topup, "amount": 0}, idem="g-a0"
        ),
        Case(
            "topup_amount_neg",
            "POST",
            "/api/v1/transactions/topup",
            json={**topup, "amount": -1},
            idem="g-an",
        ),
        Case(
            "topup_amount_frac",
            "POST",
            "/api/v1/transactions/topup",
            content=b'{"user_id":"golden_alice","asset_type":"GOLD_COINS","amount":1.5}',
            headers=json_type,
            idem="g-af",
        ),
        Case(
            "topup_amount_100_0",
            "POST",
            "/api/v1/transactions/topup",
            content=b'{"user_id":"golden_alice","asset_type":"GOLD_COINS","amount":100.0}',
            headers=json_type,
            idem="g-a100",
        ),
        Case(
            "topup_amount_exp",
            "POST",
            "/api/v1/transactions/topup",
            content=b'{"user_id":"golden_alice","asset_type":"GOLD_COINS","amount":1e2}',
            headers=json_type,
            idem="g-aexp",
        ),
        Case(
            "topup_amount_str",
            "POST",
            "/api/v1/transactions/topup",
            json={**topup, "amount": "100"},
            idem="g-as",
        ),
        Case(
            "topup_amount_bool",
            "POST",
            "/api/v1/transactions/topup",
            json={**topup, "amount": True},
            idem="g-ab",
        ),
        Case(
            "topup_amount_null",
            "POST",
            "/api/v1/transactions/topup",
            json={**topup, "amount": None},
            idem="g-anull",
        ),
        Case(
            "topup_amount_over_config",
            "POST",
            "/api/v1/transactions/topup",
            json={**topup, "amount": 1_000_001},
            idem="g-aover",
        ),
        Case(
            "topup_amount_at_config",
            "POST",
            "/api/v1/transactions/topup",
            json={**topup, "amount": 1_000_000},
            idem="g-aat",
        ),
        Case(
            "topup_amount_over_ceiling",
            "POST",
            "/api/v1/transactions/topup",
            json={**topup, "amount": 10**15 + 1},
            idem="g-aceil",
        ),
        Case(
            "topup_amount_huge",
            "POST",
            "/api/v1/transactions/topup",
            json={**topup, "amount": 10**30},
            idem="g-ahuge",
        ),
        Case(
            "topup_description_over_config",
            "POST",
            "/api/v1/transactions/topup",
            json={**topup, "description": "d" * 501},
            idem="g-d501",
        ),
        Case(
            "topup_description_at_config",
            "POST",
            "/api/v1/transactions/topup",
            json={**topup, "description": "d" * 500},
            idem="g-d500",
        ),
        Case(
            "topup_description_over_ceiling",
            "POST",
            "/api/v1/transactions/topup",
            json={**topup, "description": "d" * 10_001},
            idem="g-d10001",
        ),
        Case(
            "topup_description_nul",
            "POST",
            "/api/v1/transactions/topup",
            json={**topup, "description": "a\x00b"},
            idem="g-dnul",
        ),
        Case(
            "topup_description_number",
            "POST",
            "/api/v1/transactions/topup",
            json={**topup, "description": 5},
            idem="g-dnum",
        ),
        Case(
            "topup_metadata_big",
            "POST",
            "/api/v1/transactions/topup",
            json={**topup, "metadata": {"x": "m" * 5000}},
            idem="g-mbig",
        ),
        Case(
            "topup_metadata_deep",
            "POST",
            "/api/v1/transactions/topup",
            json={**topup, "metadata": _nested(40)},
            idem="g-mdeep",
        ),
        Case(
            "topup_metadata_nul",
            "POST",
            "/api/v1/transactions/topup",
            json={**topup, "metadata": {"a\x00": 1}},
            idem="g-mnul",
        ),
        Case(
            "topup_metadata_array",
            "POST",
            "/api/v1/transactions/topup",
            json={**topup, "metadata": [1]},
            idem="g-marr",
        ),
        Case(
            "topup_metadata_exact",
            "POST",
            "/api/v1/transactions/topup",
            content=b'{"user_id":"golden_alice","asset_type":"GOLD_COINS","amount":7,'
            b'"metadata":{"price":1.50,"big":1e400,"n":12345678901234567890}}',
            headers=json_type,
            idem="g-mexact",
        ),
        Case(
            "topup_metadata_exact_ok",
            "POST",
            "/api/v1/transactions/topup",
            content=b'{"user_id":"golden_alice","asset_type":"GOLD_COINS","amount":7,'
            b'"metadata":{"price":1.50,"tiny":1e-7,"s":"\\u00e9"}}',
            headers=json_type,
            idem="g-mexact-ok",
        ),
        Case(
            "topup_unknown_field",
            "POST",
            "/api/v1/transactions/topup",
            json={**topup, "colour": "red"},
            idem="g-uf",
        ),
        Case(
            "topup_missing_user",
            "POST",
            "/api/v1/transactions/topup",
            json={"asset_type": "GOLD_COINS", "amount": 1},
            idem="g-mu",
        ),
        Case(
            "topup_bad_user_id",
            "POST",
            "/api/v1/transactions/topup",
            json={**topup, "user_id": "a b"},
            idem="g-bu",
        ),
        Case(
            "topup_unknown_user",
            "POST",
            "/api/v1/transactions/topup",
            json={**topup, "user_id": "golden_nobody"},
            idem="g-nu",
        ),
        Case(
            "topup_unknown_asset",
            "POST",
            "/api/v1/transactions/topup",
            json={**topup, "asset_type": "NOPE"},
            idem="g-na",
        ),
        Case(
            "topup_bad_asset",
            "POST",
            "/api/v1/transactions/topup",
            json={**topup, "asset_type": "gold coins"},
            idem="g-ba",
        ),
        Case(
            "topup_expires",
            "POST",
            "/api/v1/transactions/topup",
            json={**topup, "expires_in_seconds": 60},
            idem="g-te",
        ),
        Case(
            "topup_null_body",
            "POST",
            "/api/v1/transactions/topup",
            content=b"null",
            headers=json_type,
            idem="g-null",
        ),
        Case(
            "topup_array_body",
            "POST",
            "/api/v1/transactions/topup",
            content=b"[]",
            headers=json_type,
            idem="g-arr",
        ),
        Case(
            "topup_string_body",
            "POST",
            "/api/v1/transactions/topup",
            content=b'"x"',
            headers=json_type,
            idem="g-str",
        ),
        Case(
            "topup_empty_body",
            "POST",
            "/api/v1/transactions/topup",
            content=b"",
            headers=json_type,
            idem="g-empty",
        ),
        Case(
            "topup_malformed",
            "POST",
            "/api/v1/transactions/topup",
            content=b'{"a":',
            headers=json_type,
            idem="g-mal",
        ),
        Case(
            "topup_trailing_comma",
            "POST",
            "/api/v1/transactions/topup",
            content=b'{"user_id":"golden_alice",}',
            headers=json_type,
            idem="g-tc",
        ),
        Case(
            "topup_multiline_malformed",
            "POST",
            "/api/v1/transactions/topup",
            content=b'{\n"user_id":\n}',
            headers=json_type,
            idem="g-ml",
        ),
        Case(
            "topup_duplicate_key",
            "POST",
            "/api/v1/transactions/topup",
            content=b'{"amount":1,"amount":2}',
            headers=json_type,
            idem="g-dup",
        ),
        Case(
            "topup_nan",
            "POST",
            "/api/v1/transactions/topup",
            content=b'{"amount":NaN}',
            headers=json_type,
            idem="g-nan",
        ),
        Case(
            "topup_huge_number",
            "POST",
            "/api/v1/transactions/topup",
            content=b'{"amount":1e999}',
            headers=json_type,
            idem="g-1e999",
        ),
        Case(
            "topup_not_utf8",
            "POST",
            "/api/v1/transactions/topup",
            content=b'{"a":"\xff"}',
            headers=json_type,
            idem="g-nu8",
        ),
        Case(
            "topup_utf16",
            "POST",
            "/api/v1/transactions/topup",
            content='{"a":1}'.encode("utf-16-le"),
            headers=json_type,
            idem="g-u16",
        ),
        Case(
            "topup_bom",
            "POST",
            "/api/v1/transactions/topup",
            content=b'\xef\xbb\xbf{"a":1}',
            headers=json_type,
            idem="g-bom",
        ),
        Case(
            "topup_deep",
            "POST",
            "/api/v1/transactions/topup",
            content=b"[" * 5000 + b"]" * 5000,
            headers=json_type,
            idem="g-deep",
        ),
        Case(
            "topup_text_plain",
            "POST",
            "/api/v1/transactions/topup",
            content=json.dumps(topup).encode(),
            headers={"Content-Type": "text/plain"},
            idem="g-tp",
        ),
        Case(
            "topup_no_content_type",
            "POST",
            "/api/v1/transactions/topup",
            content=json.dumps(topup).encode(),
            idem="g-nct",
        ),
        Case(
            "topup_charset",
            "POST",
            "/api/v1/transactions/topup",
            content=json.dumps(topup).encode(),
            headers={"Content-Type": "application/json; charset=utf-8"},
            idem="g-charset",
        ),
        Case("topup_query_string", "POST", "/api/v1/transactions/topup?x=1", json=topup, idem="g-qs"),
        Case("topup_query_replay", "POST", "/api/v1/transactions/topup?x=1", json=topup, idem="g-topup-1"),
        Case(
            "topup_too_large",
            "POST",
            "/api/v1/transactions/topup",
            json={**topup, "description": big},
            idem="g-big",
        ),
        Case(
            "topup_bad_request_id",
            "POST",
            "/api/v1/transactions/topup",
            json=topup,
            idem="g-rid",
            headers={"X-Request-ID": "not ok"},
        ),
        Case("topup_no_auth", "POST", "/api/v1/transactions/topup", key=None, json=topup, idem="g-na1"),
        Case(
            "topup_unknown_token",
            "POST",
            "/api/v1/transactions/topup",
            key=None,
            json=topup,
            idem="g-na2",
            headers={"Authorization": "Bearer wk_unknown"},
        ),
        Case(
            "topup_basic_auth",
            "POST",
            "/api/v1/transactions/topup",
            key=None,
            json=topup,
            idem="g-na3",
            headers={"Authorization": "Basic Zm9vOmJhcg=="},
        ),
        Case(
            "topup_bearer_empty",
            "POST",
            "/api/v1/transactions/topup",
            key=None,
            json=topup,
            idem="g-na4",
            headers={"Authorization": "Bearer "},
        ),
        Case(
            "topup_lowercase_bearer",
            "POST",
            "/api/v1/transactions/topup",
            key="lower",
            json=topup,
            idem="g-lower",
        ),
        Case("topup_read_scope", "POST", "/api/v1/transactions/topup", key="read", json=topup, idem="g-rs"),
        Case(
            "topup_restricted_asset",
            "POST",
            "/api/v1/transactions/topup",
            key="restricted",
            json={**topup, "asset_type": "DIAMONDS"},
            idem="g-ra",
        ),
        Case(
            "topup_restricted_amount",
            "POST",
            "/api/v1/transactions/topup",
            key="restricted",
            json={**topup, "amount": 51},
            idem="g-ram",
        ),
        Case(
            "topup_restricted_ok",
            "POST",
            "/api/v1/transactions/topup",
            key="restricted",
            json={**topup, "amount": 50},
            idem="g-rok",
        ),
        Case("rate_limited_1", "POST", "/api/v1/transactions/topup", key="slow", json=topup, idem="g-rl1"),
        Case("rate_limited_2", "POST", "/api/v1/transactions/topup", key="slow", json=topup, idem="g-rl2"),
        # several faults at once: which one is answered
        Case(
            "multi_read_scope_malformed",
            "POST",
            "/api/v1/transactions/topup",
            key="read",
            content=b"{",
            headers=json_type,
            idem="g-m1",
        ),
        Case(
            "multi_no_auth_malformed",
            "POST",
            "/api/v1/transactions/topup",
            key=None,
            content=b"{",
            headers=json_type,
            idem="g-m2",
        ),
        Case(
            "multi_bad_key_header_bad_body",
            "POST",
            "/api/v1/transactions/topup",
            json={**topup, "amount": 0},
            idem='"abc',
        ),
        Case("multi_no_key_bad_body", "POST", "/api/v1/transactions/topup", json={**topup, "amount": 0}),
        Case(
            "multi_no_key_over_config",
            "POST",
            "/api/v1/transactions/topup",
            json={**topup, "amount": 1_000_001},
        ),
        Case(
            "multi_restricted_over_config",
            "POST",
            "/api/v1/transactions/topup",
            key="restricted",
            json={**topup, "amount": 1_000_001},
            idem="g-m5",
        ),
        Case(
            "multi_over_config_unknown_field",
            "POST",
            "/api/v1/transactions/topup",
            json={**topup, "amount": 1_000_001, "zz": 1},
            idem="g-m6",
        ),
        Case(
            "multi_description_and_amount",
            "POST",
            "/api/v1/transactions/topup",
            json={**topup, "amount": 1_000_001, "description": "d" * 501},
            idem="g-m7",
        ),
        Case(
            "multi_long_header_key_bad_body",
            "POST",
            "/api/v1/transactions/topup",
            json={**topup, "amount": 0},
            idem="k" * 256,
        ),
        Case(
            "multi_keys_differ_over_config",
            "POST",
            "/api/v1/transactions/topup",
            json={**topup, "amount": 1_000_001, "idempotency_key": "g-x"},
            idem="g-y",
        ),
        # bonus, spend
        Case(
            "bonus",
            "POST",
            "/api/v1/transactions/bonus",
            key="all",
            json={"user_id": A, "asset_type": "LOYALTY_POINTS", "amount": 40},
            idem="g-bonus-1",
        ),
        Case(
            "bonus_expires_in",
            "POST",
            "/api/v1/transactions/bonus",
            json={"user_id": A, "asset_type": "GOLD_COINS", "amount": 3, "expires_in_seconds": 3600},
            idem="g-bonus-2",
        ),
        Case(
            "bonus_expires_at",
            "POST",
            "/api/v1/transactions/bonus",
            json={
                "user_id": A,
                "asset_type": "GOLD_COINS",
                "amount": 3,
                "expires_at": "2099-01-01T00:00:00Z",
            },
            idem="g-bonus-3",
        ),
        Case(
            "bonus_expires_far",
            "POST",
            "/api/v1/transactions/bonus",
            json={
                "user_id": A,
                "asset_type": "GOLD_COINS",
                "amount": 3,
                "expires_at": "2999-01-01T00:00:00Z",
            },
            idem="g-bonus-4",
        ),
        Case(
            "bonus_expires_past",
            "POST",
            "/api/v1/transactions/bonus",
            json={
                "user_id": A,
                "asset_type": "GOLD_COINS",
                "amount": 3,
                "expires_at": "2001-01-01T00:00:00Z",
            },
            idem="g-bonus-5",
        ),
        Case(
            "bonus_expires_both",
            "POST",
            "/api/v1/transactions/bonus",
            json={
                "user_id": A,
                "asset_type": "GOLD_COINS",
                "amount": 3,
                "expires_in_seconds": 5,
                "expires_at": "2099-01-01T00:00:00Z",
            },
            idem="g-bonus-6",
        ),
        Case(
            "bonus_expires_str",
            "POST",
            "/api/v1/transactions/bonus",
            json={"user_id": A, "asset_type": "GOLD_COINS", "amount": 3, "expires_in_seconds": "60"},
            idem="g-bonus-7",
        ),
        Case(
            "bonus_expires_naive",
            "POST",
            "/api/v1/transactions/bonus",
            json={"user_id": A, "asset_type": "GOLD_COINS", "amount": 3, "expires_at": "2099-01-01T00:00:00"},
            idem="g-bonus-8",
        ),
        Case(
            "bonus_expires_in_over",
            "POST",
            "/api/v1/transactions/bonus",
            json={"user_id": A, "asset_type": "GOLD_COINS", "amount": 3, "expires_in_seconds": 10**10},
            idem="g-bonus-9",
        ),
        Case(
            "bonus_credit_only",
            "POST",
            "/api/v1/transactions/bonus",
            key="credit",
            json={"user_id": A, "asset_type": "GOLD_COINS", "amount": 3},
            idem="g-bonus-10",
        ),
        Case(
            "spend",
            "POST",
            "/api/v1/transactions/spend",
            json={
                "user_id": A,
                "asset_type": "GOLD_COINS",
                "amount": 30,
                "description": "sword",
                "metadata": {"item": "sword"},
            },
            idem="g-spend-1",
        ),
        Case(
            "spend_insufficient",
            "POST",
            "/api/v1/transactions/spend",
            json={"user_id": A, "asset_type": "GOLD_COINS", "amount": 999_999},
            idem="g-spend-2",
        ),
        Case(
            "spend_credit_scope",
            "POST",
            "/api/v1/transactions/spend",
            key="credit",
            json={"user_id": A, "asset_type": "GOLD_COINS", "amount": 1},
            idem="g-spend-3",
        ),
        Case(
            "spend_restricted_op",
            "POST",
            "/api/v1/transactions/spend",
            key="restricted",
            json={"user_id": A, "asset_type": "GOLD_COINS", "amount": 1},
            idem="g-spend-4",
        ),
        Case(
            "spend_expires",
            "POST",
            "/api/v1/transactions/spend",
            json={"user_id": A, "asset_type": "GOLD_COINS", "amount": 1, "expires_in_seconds": 5},
            idem="g-spend-5",
        ),
        Case(
            "spend_replay",
            "POST",
            "/api/v1/transactions/spend",
            json={
                "user_id": A,
                "asset_type": "GOLD_COINS",
                "amount": 30,
                "description": "sword",
                "metadata": {"item": "sword"},
            },
            idem="g-spend-1",
        ),
        # batch
        Case(
            "batch",
            "POST",
            "/api/v1/transactions/batch",
            key="admin",
            idem="g-batch-1",
            json={
                "operations": [
                    {"type": "topup", "user_id": B, "asset_type": "DIAMONDS", "amount": 20},
                    {
                        "type": "transfer",
                        "user_id": B,
                        "to_user_id": C,
                        "asset_type": "DIAMONDS",
                        "amount": 5,
                        "fee": 1,
                    },
                    {
                        "type": "bonus",
                        "user_id": C,
                        "asset_type": "GOLD_COINS",
                        "amount": 2,
                        "expires_in_seconds": 600,
                    },
                ]
            },
        ),
        Case(
            "batch_replay",
            "POST",
            "/api/v1/transactions/batch",
            key="admin",
            idem="g-batch-1",
            json={
                "operations": [
                    {"type": "topup", "user_id": B, "asset_type": "DIAMONDS", "amount": 20},
                    {
                        "type": "transfer",
                        "user_id": B,
                        "to_user_id": C,
                        "asset_type": "DIAMONDS",
                        "amount": 5,
                        "fee": 1,
                    },
                    {
                        "type": "bonus",
                        "user_id": C,
                        "asset_type": "GOLD_COINS",
                        "amount": 2,
                        "expires_in_seconds": 600,
                    },
                ]
            },
        ),
        Case(
            "batch_empty",
            "POST",
            "/api/v1/transactions/batch",
            key="admin",
            idem="g-batch-2",
            json={"operations": []},
        ),
        Case(
            "batch_too_many",
            "POST",
            "/api/v1/transactions/batch",
            key="admin",
            idem="g-batch-3",
            json={
                "operations": [{"type": "topup", "user_id": B, "asset_type": "GOLD_COINS", "amount": 1}] * 101
            },
        ),
        Case(
            "batch_over_ceiling",
            "POST",
            "/api/v1/transactions/batch",
            key="admin",
            idem="g-batch-3b",
            json={
                "operations": [{"type": "topup", "user_id": B, "asset_type": "GOLD_COINS", "amount": 1}]
                * 1001
            },
        ),
        Case(
            "batch_no_to",
            "POST",
            "/api/v1/transactions/batch",
            key="admin",
            idem="g-batch-4",
            json={
                "operations": [{"type": "transfer", "user_id": B, "asset_type": "GOLD_COINS", "amount": 1}]
            },
        ),
        Case(
            "batch_same_user",
            "POST",
            "/api/v1/transactions/batch",
            key="admin",
            idem="g-batch-5",
            json={
                "operations": [
                    {
                        "type": "transfer",
                        "user_id": B,
                        "to_user_id": B,
                        "asset_type": "GOLD_COINS",
                        "amount": 1,
                    }
                ]
            },
        ),
        Case(
            "batch_fee_on_topup",
            "POST",
            "/api/v1/transactions/batch",
            key="admin",
            idem="g-batch-6",
            json={
                "operations": [
                    {"type": "topup", "user_id": B, "asset_type": "GOLD_COINS", "amount": 1, "fee": 2}
                ]
            },
        ),
        Case(
            "batch_over_config",
            "POST",
            "/api/v1/transactions/batch",
            key="admin",
            idem="g-batch-7",
            json={
                "operations": [
                    {"type": "topup", "user_id": B, "asset_type": "GOLD_COINS", "amount": 1},
                    {"type": "topup", "user_id": B, "asset_type": "GOLD_COINS", "amount": 1_000_001},
                ]
            },
        ),
        Case(
            "batch_fee_over_config",
            "POST",
            "/api/v1/transactions/batch",
            key="admin",
            idem="g-batch-7b",
            json={
                "operations": [
                    {
                        "type": "transfer",
                        "user_id": B,
                        "to_user_id": C,
                        "asset_type": "GOLD_COINS",
                        "amount": 1,
                        "fee": 1_000_001,
                    }
                ]
            },
        ),
        Case(
            "batch_description_over",
            "POST",
            "/api/v1/transactions/batch",
            key="admin",
            idem="g-batch-7c",
            json={
                "operations": [
                    {
                        "type": "topup",
                        "user_id": B,
                        "asset_type": "GOLD_COINS",
                        "amount": 1,
                        "description": "d" * 501,
                    }
                ]
            },
        ),
        Case(
            "batch_scope",
            "POST",
            "/api/v1/transactions/batch",
            key="credit",
            idem="g-batch-8",
            json={
                "operations": [
                    {"type": "topup", "user_id": B, "asset_type": "GOLD_COINS", "amount": 1},
                    {"type": "spend", "user_id": B, "asset_type": "GOLD_COINS", "amount": 1},
                ]
            },
        ),
        Case(
            "batch_restricted",
            "POST",
            "/api/v1/transactions/batch",
            key="restricted",
            idem="g-batch-9",
            json={"operations": [{"type": "topup", "user_id": B, "asset_type": "GOLD_COINS", "amount": 60}]},
        ),
        Case(
            "batch_capture",
            "POST",
            "/api/v1/transactions/batch",
            key="admin",
            idem="g-batch-10",
            json={"operations": [{"type": "capture", "user_id": B, "asset_type": "GOLD_COINS", "amount": 1}]},
        ),
        Case(
            "batch_spend_expires",
            "POST",
            "/api/v1/transactions/batch",
            key="admin",
            idem="g-batch-11",
            json={
                "operations": [
                    {
                        "type": "spend",
                        "user_id": B,
                        "asset_type": "DIAMONDS",
                        "amount": 1,
                        "expires_in_seconds": 5,
                    }
                ]
            },
        ),
        Case(
            "batch_insufficient",
            "POST",
            "/api/v1/transactions/batch",
            key="admin",
            idem="g-batch-12",
            json={"operations": [{"type": "spend", "user_id": B, "asset_type": "DIAMONDS", "amount": 10**6}]},
        ),
        Case(
            "batch_body_key",
            "POST",
            "/api/v1/transactions/batch",
            key="admin",
            json={
                "idempotency_key": "g-batch-13",
                "operations": [{"type": "topup", "user_id": B, "asset_type": "GOLD_COINS", "amount": 9}],
            },
        ),
        Case(
            "batch_no_key",
            "POST",
            "/api/v1/transactions/batch",
            key="admin",
            json={"operations": [{"type": "topup", "user_id": B, "asset_type": "GOLD_COINS", "amount": 9}]},
        ),
        Case(
            "batch_not_object",
            "POST",
            "/api/v1/transactions/batch",
            key="admin",
            idem="g-batch-14",
            json={"operations": [5]},
        ),
        # transfers
        Case(
            "transfer",
            "POST",
            "/api/v1/transactions/transfer",
            key="transfer",
            idem="g-tr-1",
            json={"from_user_id": A, "to_user_id": B, "asset_type": "GOLD_COINS", "amount": 10, "fee": 2},
        ),
        Case(
            "transfer_same",
            "POST",
            "/api/v1/transactions/transfer",
            key="transfer",
            idem="g-tr-2",
            json={"from_user_id": A, "to_user_id": A, "asset_type": "GOLD_COINS", "amount": 10},
        ),
        Case(
            "transfer_fee_over",
            "POST",
            "/api/v1/transactions/transfer",
            key="transfer",
            idem="g-tr-3",
            json={
                "from_user_id": A,
                "to_user_id": B,
                "asset_type": "GOLD_COINS",
                "amount": 1,
                "fee": 1_000_001,
            },
        ),
        Case(
            "transfer_fee_neg",
            "POST",
            "/api/v1/transactions/transfer",
            key="transfer",
            idem="g-tr-3b",
            json={"from_user_id": A, "to_user_id": B, "asset_type": "GOLD_COINS", "amount": 1, "fee": -1},
        ),
        Case(
            "transfer_insufficient",
            "POST",
            "/api/v1/transactions/transfer",
            key="transfer",
            idem="g-tr-4",
            json={"from_user_id": A, "to_user_id": B, "asset_type": "GOLD_COINS", "amount": 900_000},
        ),
        Case(
            "transfer_scope",
            "POST",
            "/api/v1/transactions/transfer",
            idem="g-tr-5",
            json={"from_user_id": A, "to_user_id": B, "asset_type": "GOLD_COINS", "amount": 1},
        ),
        Case(
            "transfer_restricted_fee",
            "POST",
            "/api/v1/transactions/transfer",
            key="restricted_transfer",
            idem="g-tr-6",
            json={"from_user_id": A, "to_user_id": B, "asset_type": "GOLD_COINS", "amount": 40, "fee": 20},
        ),
        Case(
            "transfer_unknown_receiver",
            "POST",
            "/api/v1/transactions/transfer",
            key="transfer",
            idem="g-tr-7",
            json={"from_user_id": A, "to_user_id": "golden_nobody", "asset_type": "GOLD_COINS", "amount": 1},
        ),
        # reads of transactions and wallets
        Case("get_transaction", "GET", "/api/v1/transactions/{topup}"),
        Case("get_transaction_bad_id", "GET", "/api/v1/transactions/not-a-uuid"),
        Case("get_transaction_unknown", "GET", "/api/v1/transactions/00000000-0000-0000-0000-000000000000"),
        Case("get_transaction_scope", "GET", "/api/v1/transactions/{topup}", key="credit"),
        Case("balance", "GET", f"/api/v1/wallets/{A}/balance", headers={"X-Request-ID": "golden-bal"}),
        Case("balance_head", "HEAD", f"/api/v1/wallets/{A}/balance", headers={"X-Request-ID": "golden-head"}),
        Case("balance_asset", "GET", f"/api/v1/wallets/{A}/balance?asset_type=GOLD_COINS"),
        Case("balance_asset_unknown", "GET", f"/api/v1/wallets/{A}/balance?asset_type=NOPE"),
        Case("balance_asset_bad", "GET", f"/api/v1/wallets/{A}/balance?asset_type=a%20b"),
        Case("balance_as_of", "GET", f"/api/v1/wallets/{A}/balance?as_of=2999-01-01T00:00:00Z"),
        Case("balance_as_of_bad", "GET", f"/api/v1/wallets/{A}/balance?as_of=yesterday"),
        Case("balance_unknown_user", "GET", "/api/v1/wallets/golden_nobody/balance"),
        Case("balance_bad_user", "GET", "/api/v1/wallets/a%00b/balance"),
        Case("balance_no_auth", "GET", f"/api/v1/wallets/{A}/balance", key=None),
        Case("balance_credit_scope", "GET", f"/api/v1/wallets/{A}/balance", key="credit"),
        Case("balance_slash", "GET", f"/api/v1/wallets/{A}/balance/"),
        Case("balance_post", "POST", f"/api/v1/wallets/{A}/balance", json={}),
        Case("history", "GET", f"/api/v1/wallets/{A}/transactions?limit=3"),
        Case(
            "history_filters",
            "GET",
            f"/api/v1/wallets/{A}/transactions?asset_type=GOLD_COINS&type=spend"
            "&from=2000-01-01T00:00:00Z&to=2999-01-01T00:00:00Z",
        ),
        Case("history_bad_type", "GET", f"/api/v1/wallets/{A}/transactions?type=gift"),
        Case("history_bad_from", "GET", f"/api/v1/wallets/{A}/transactions?from=1700000000"),
        Case(
            "history_to_before_from",
            "GET",
            f"/api/v1/wallets/{A}/transactions?from=2020-01-02T00:00:00Z&to=2020-01-01T00:00:00Z",
        ),
        Case("history_unknown_user", "GET", "/api/v1/wallets/golden_nobody/transactions"),
        Case("history_limit_big", "GET", f"/api/v1/wallets/{A}/transactions?limit=201"),
        # reversals
        Case(
            "reverse_partial",
            "POST",
            "/api/v1/transactions/{spend}/reverse",
            key="reverse",
            idem="g-rev-1",
            json={"amount": 10, "reason": "late"},
        ),
        Case("reverse_rest", "POST", "/api/v1/transactions/{spend}/reverse", key="reverse", idem="g-rev-2"),
        Case(
            "reverse_more",
            "POST",
            "/api/v1/transactions/{spend}/reverse",
            key="reverse",
            idem="g-rev-3",
            json={"amount": 1},
        ),
        Case(
            "reverse_null_amount",
            "POST",
            "/api/v1/transactions/{topup}/reverse",
            key="reverse",
            idem="g-rev-4",
            json={"amount": None},
        ),
        Case(
            "reverse_null_body",
            "POST",
            "/api/v1/transactions/{topup}/reverse",
            key="reverse",
            idem="g-rev-5",
            content=b"null",
            headers=json_type,
        ),
        Case(
            "reverse_over_config",
            "POST",
            "/api/v1/transactions/{topup}/reverse",
            key="reverse",
            idem="g-rev-6",
            json={"amount": 1_000_001},
        ),
        Case(
            "reverse_reason_over",
            "POST",
            "/api/v1/transactions/{topup}/reverse",
            key="reverse",
            idem="g-rev-6b",
            json={"amount": 1, "reason": "r" * 501},
        ),
        Case(
            "reverse_allow_negative_not_admin",
            "POST",
            "/api/v1/transactions/{topup}/reverse",
            key="reverse",
            idem="g-rev-7",
            json={"amount": 1, "allow_negative": True},
        ),
        Case(
            "reverse_allow_negative_str",
            "POST",
            "/api/v1/transactions/{topup}/reverse",
            key="admin",
            idem="g-rev-8",
            json={"amount": 1, "allow_negative": "true"},
        ),
        Case(
            "reverse_clawback",
            "POST",
            "/api/v1/transactions/{topup}/reverse",
            key="admin",
            idem="g-rev-9",
            json={"amount": 5, "allow_negative": True, "metadata": {"why": "fraud"}},
        ),
        Case(
            "reverse_unknown",
            "POST",
            "/api/v1/transactions/00000000-0000-0000-0000-000000000000/reverse",
            key="reverse",
            idem="g-rev-10",
        ),
        Case("reverse_bad_id", "POST", "/api/v1/transactions/nope/reverse", key="reverse", idem="g-rev-11"),
        Case(
            "reverse_a_reversal",
            "POST",
            "/api/v1/transactions/{reverse_partial}/reverse",
            key="reverse",
            idem="g-rev-12",
        ),
        Case("reverse_scope", "POST", "/api/v1/transactions/{topup}/reverse", idem="g-rev-13"),
        Case("reverse_no_key", "POST", "/api/v1/transactions/{topup}/reverse", key="reverse"),
        Case(
            "reverse_body_key",
            "POST",
            "/api/v1/transactions/{topup}/reverse",
            key="reverse",
            json={"amount": 1, "idempotency_key": "g-rev-14"},
        ),
        # holds
        Case(
            "hold",
            "POST",
            "/api/v1/holds",
            idem="g-hold-1",
            json={
                "user_id": A,
                "asset_type": "GOLD_COINS",
                "amount": 20,
                "expires_in_seconds": 600,
                "description": "auction",
            },
        ),
        Case(
            "hold_default_expiry",
            "POST",
            "/api/v1/holds",
            idem="g-hold-2",
            json={"user_id": A, "asset_type": "GOLD_COINS", "amount": 5},
        ),
        Case(
            "hold_expiry_over",
            "POST",
            "/api/v1/holds",
            idem="g-hold-3",
            json={
                "user_id": A,
                "asset_type": "GOLD_COINS",
                "amount": 5,
                "expires_in_seconds": 7 * 24 * 3600 + 1,
            },
        ),
        Case(
            "hold_expiry_zero",
            "POST",
            "/api/v1/holds",
            idem="g-hold-4",
            json={"user_id": A, "asset_type": "GOLD_COINS", "amount": 5, "expires_in_seconds": 0},
        ),
        Case(
            "hold_expiry_str",
            "POST",
            "/api/v1/holds",
            idem="g-hold-5",
            json={"user_id": A, "asset_type": "GOLD_COINS", "amount": 5, "expires_in_seconds": "60"},
        ),
        Case(
            "hold_amount_over",
            "POST",
            "/api/v1/holds",
            idem="g-hold-6",
            json={"user_id": A, "asset_type": "GOLD_COINS", "amount": 1_000_001},
        ),
        Case(
            "hold_insufficient",
            "POST",
            "/api/v1/holds",
            idem="g-hold-7",
            json={"user_id": A, "asset_type": "GOLD_COINS", "amount": 999_999},
        ),
        Case(
            "hold_scope",
            "POST",
            "/api/v1/holds",
            key="credit",
            idem="g-hold-8",
            json={"user_id": A, "asset_type": "GOLD_COINS", "amount": 5},
        ),
        Case(
            "hold_no_key",
            "POST",
            "/api/v1/holds",
            json={"user_id": A, "asset_type": "GOLD_COINS", "amount": 5},
        ),
        Case("capture_partial", "POST", "/api/v1/holds/{hold}/capture", idem="g-cap-1", json={"amount": 15}),
        Case("capture_again", "POST", "/api/v1/holds/{hold}/capture", idem="g-cap-2"),
        Case("capture_replay", "POST", "/api/v1/holds/{hold}/capture", idem="g-cap-1", json={"amount": 15}),
        Case(
            "capture_null",
            "POST",
            "/api/v1/holds/{hold_default_expiry}/capture",
            idem="g-cap-3",
            json={"amount": None},
        ),
        Case(
            "capture_over_config",
            "POST",
            "/api/v1/holds/{hold_default_expiry}/capture",
            idem="g-cap-4",
            json={"amount": 1_000_001},
        ),
        Case(
            "capture_over_hold",
            "POST",
            "/api/v1/holds/{hold_default_expiry}/capture",
            idem="g-cap-5",
            json={"amount": 6},
        ),
        Case(
            "capture_unknown",
            "POST",
            "/api/v1/holds/00000000-0000-0000-0000-000000000000/capture",
            idem="g-cap-6",
        ),
        Case("capture_bad_id", "POST", "/api/v1/holds/nope/capture", idem="g-cap-7"),
        Case("void", "POST", "/api/v1/holds/{hold_default_expiry}/void", idem="g-void-1"),
        Case("void_again", "POST", "/api/v1/holds/{hold_default_expiry}/void", idem="g-void-2"),
        Case("void_empty_object", "POST", "/api/v1/holds/{hold}/void", idem="g-void-3", json={}),
        Case("void_extra", "POST", "/api/v1/holds/{hold}/void", idem="g-void-4", json={"amount": 1}),
        Case("void_no_key", "POST", "/api/v1/holds/{hold}/void"),
        Case("get_hold", "GET", "/api/v1/holds/{hold}"),
        Case("get_hold_bad", "GET", "/api/v1/holds/nope"),
        Case("holds_open", "GET", f"/api/v1/wallets/{A}/holds"),
        Case("holds_all", "GET", f"/api/v1/wallets/{A}/holds?status=all&limit=1"),
        Case("holds_bad_status", "GET", f"/api/v1/wallets/{A}/holds?status=closed"),
        Case("holds_unknown_user", "GET", "/api/v1/wallets/golden_nobody/holds"),
        # reports, events, console reads
        Case(
            "liabilities",
            "GET",
            "/api/v1/reports/liabilities?as_of=2999-01-01T00:00:00Z"
            "&from=2000-01-01T00:00:00Z&to=2999-01-01T00:00:00Z",
            key="admin",
        ),
        Case("liabilities_scope", "GET", "/api/v1/reports/liabilities"),
        Case("liabilities_bad", "GET", "/api/v1/reports/liabilities?as_of=now", key="admin"),
        Case("events", "GET", "/api/v1/events?limit=3"),
        Case("events_bad_cursor", "GET", "/api/v1/events?after=zzz"),
        Case("me_all", "GET", "/api/v1/me"),
        Case("me_restricted", "GET", "/api/v1/me", key="restricted"),
        Case("search", "GET", "/api/v1/search/users?q=golden_b"),
        Case("search_empty", "GET", "/api/v1/search/users?q="),
        Case("volume", "GET", "/api/v1/reports/volume?days=2"),
        Case("volume_bad", "GET", "/api/v1/reports/volume?days=0"),
        Case("audit_scope", "GET", "/api/v1/audit"),
        # webhooks
        Case(
            "webhook",
            "POST",
            "/api/v1/webhooks",
            key="admin",
            json={
                "url": "https://example.com/hook",
                "event_types": ["transaction.posted"],
                "description": "d",
            },
        ),
        Case("webhook_bad_url", "POST", "/api/v1/webhooks", key="admin", json={"url": "ftp://x"}),
        Case(
            "webhook_repeated_type",
            "POST",
            "/api/v1/webhooks",
            key="admin",
            json={
                "url": "https://example.com/h",
                "event_types": ["transaction.posted", "transaction.posted"],
            },
        ),
        Case("webhooks", "GET", "/api/v1/webhooks", key="admin"),
        Case("webhook_get_bad", "GET", "/api/v1/webhooks/0", key="admin"),
        Case("webhook_get_unknown", "GET", "/api/v1/webhooks/999999", key="admin"),
        Case("webhook_patch_str", "PATCH", "/api/v1/webhooks/999999", key="admin", json={"active": "no"}),
        Case("webhook_dead_letters", "GET", "/api/v1/webhooks/999999/dead-letters", key="admin"),
        Case("webhook_redeliver", "POST", "/api/v1/webhooks/999999/dead-letters/1/redeliver", key="admin"),
        Case(
            "webhook_redeliver_body",
            "POST",
            "/api/v1/webhooks/999999/dead-letters/1/redeliver",
            key="admin",
            json={"x": 1},
        ),
        Case("webhook_delete_unknown", "DELETE", "/api/v1/webhooks/999999", key="admin"),
        Case("webhooks_scope", "GET", "/api/v1/webhooks"),
        # the state all of it left
        Case("balance_a_end", "GET", f"/api/v1/wallets/{A}/balance"),
        Case("balance_b_end", "GET", f"/api/v1/wallets/{B}/balance"),
        Case("balance_c_end", "GET", f"/api/v1/wallets/{C}/balance"),
        Case("history_b_end", "GET", f"/api/v1/wallets/{B}/transactions"),
    ]
    return cases


_ID_OF_CASE = re.compile(r"\{([a-z_0-9]+)\}")


class Normalizer:
    """Replaces what differs between runs, identically on both sides (UUIDs numbered by first
    appearance across the whole run)."""

    def __init__(self) -> None:
        self.uuids: dict[str, str] = {}

    def _uuid(self, match: re.Match[str]) -> str:
        value = match.group(0)
        if value == "00000000-0000-0000-0000-000000000000":
            return value
        return self.uuids.setdefault(value, f"<uuid-{len(self.uuids) + 1}>")

    def text(self, text: str, *, event_cursors: bool = False) -> str:
        if event_cursors:
            text = _EVENT_CURSOR.sub(lambda m: f'"{m.group(1)}":"<event cursor>"', text)
        text = _UUID.sub(self._uuid, text)
        text = _TIME.sub("<time>", text)
        text = _DAY.sub("<day>", text)
        return _SECRET.sub('"secret":"<secret>"', text)


async def _run(app: Any, keys: dict[str, str]) -> list[dict[str, Any]]:
    normalize = Normalizer()
    ids: dict[str, str] = {}
    answers: list[dict[str, Any]] = []
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://wallet.test", timeout=60) as http:
        for case in _cases():
            headers: dict[str, str] = {}
            if case.key == "lower":
                headers["Authorization"] = f"bearer {keys['all']}"
            elif case.key is not None:
                headers["Authorization"] = f"Bearer {keys[case.key]}"
            if case.idem is not None:
                headers["Idempotency-Key"] = case.idem
            headers.update(case.headers)
            path = _ID_OF_CASE.sub(lambda m: ids[m.group(1)], case.path)
            response = await http.request(
                case.method,
                path,
                headers=[(k.encode(), v.encode()) for k, v in headers.items()],
                json=case.json if case.content is None and case.json is not None else None,
                content=case.content,
            )
            body = response.content
            try:
                document = json.loads(body)
            except ValueError:
                document = None
            if isinstance(document, dict) and isinstance(document.get("id"), str):
                ids[case.name] = document["id"]
            sent = dict(response.headers.items())
            length = sent.pop("content-length", None)
            if case.method != "HEAD" and length is not None:
                assert int(length) == len(body), (case.name, length, len(body))
            request_id = sent.get("x-request-id", "")
            if _REQUEST_ID.fullmatch(request_id):
                sent["x-request-id"] = "<generated>"
            answers.append(
                {
                    "name": case.name,
                    "request": f"{case.method} {case.path}",
                    "status": response.status_code,
                    "headers": {k: normalize.text(v) for k, v in sorted(sent.items())},
                    "content_length": None if case.method != "HEAD" else length,
                    "body": normalize.text(
                        body.decode("utf-8", "replace"),
                        event_cursors="/events" in case.path or "/webhooks" in case.path,
                    )
                    if case.body_kept
                    else "<not kept>",
                }
            )
    return answers


@pytest.fixture
async def golden_app(
    create_database: Callable[..., Awaitable[str]], settings: Settings
) -> AsyncIterator[tuple[Any, dict[str, str]]]:
    """The application on a database of its own, so every id and count is the same each run."""
    url = await create_database()
    await upgrade_to_head_async(url)
    conn = await asyncpg.connect(url)
    try:
        await seed_reference_data(conn)
        keys = {
            "admin": await create_api_key(conn, "golden-admin", ["admin"]),
            "all": await create_api_key(conn, "golden-all", ["read", "credit", "spend"]),
            "read": await create_api_key(conn, "golden-read", ["read"]),
            "credit": await create_api_key(conn, "golden-credit", ["credit"]),
            "reverse": await create_api_key(conn, "golden-reverse", ["reverse", "read"]),
            "transfer": await create_api_key(conn, "golden-transfer", ["transfer", "read"]),
            "restricted": await create_api_key(
                conn,
                "golden-restricted",
                ["credit", "spend", "read"],
                restrictions=KeyRestrictions(
                    asset_codes=frozenset({"GOLD_COINS"}),
                    operations=frozenset({KeyOperation.TOPUP}),
                    max_amount_minor=50,
                ),
            ),
            "restricted_transfer": await create_api_key(
                conn,
                "golden-restricted-transfer",
                ["transfer"],
                restrictions=KeyRestrictions(max_amount_minor=50),
            ),
            "slow": await create_api_key(
                conn, "golden-slow", ["credit"], rate_limit=RateLimitOverride(rps=0.001, burst=1)
            ),
        }
    finally:
        await conn.close()
    application = create_app(
        settings.model_copy(update={"database_url": url, "webhook_poll_interval_ms": 0, "access_log": False})
    )
    async with application.router.lifespan_context(application):
        yield application, keys


async def test_every_route_answers_as_recorded(golden_app: tuple[Any, dict[str, str]]) -> None:
    app, keys = golden_app
    answers = await _run(app, keys)
    if RECORD:
        GOLDEN.write_text(json.dumps(answers, indent=1, ensure_ascii=False) + "\n")
        pytest.skip(f"recorded {len(answers)} answers in {GOLDEN.name}")
    actual = os.environ.get("WALLET_GOLDEN_ACTUAL")  # a path: the answers of this run, to diff
    if actual:
        Path(actual).write_text(json.dumps(answers, indent=1, ensure_ascii=False) + "\n")
    recorded = json.loads(GOLDEN.read_text())
    assert [a["name"] for a in answers] == [r["name"] for r in recorded], "the scenario changed: record again"
    differing = [(r["name"], r, a) for r, a in zip(recorded, answers, strict=True) if r != a]
    assert not differing, "\n\n".join(
        f"{name}:\n  recorded {json.dumps(r, ensure_ascii=False)[:1500]}\n  now      "
        f"{json.dumps(a, ensure_ascii=False)[:1500]}"
        for name, r, a in differing
    )
