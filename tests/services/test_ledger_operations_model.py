"""Property test of the ledger operations: any sequence of top-ups, bonuses, spends, holds
(place, capture in whole or part, void), transfers with fees, partial or whole refunds and
clawbacks (with or without allow_negative), retries of earlier keys and reuses of earlier keys
for other requests, applied through the SQL functions on one connection, lands exactly where a
small in-memory model says: every outcome (posted, insufficient_funds, amount_exceeds_reversible,
hold_already_captured, ...), every response's numbers, and at the end every balance, held amount,
hold and reversed total in the database.

The last tests check over HTTP two cases this test found: credits to a user an admin clawback left
in debt (they repay part of it), and admin clawbacks while holds are open (not a 500).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support import new_key
from wallet.services.verify import verify_ledger

ASSETS = ("GOLD_COINS", "DIAMONDS")
N_USERS = 3
REVERSIBLE = {"topup": "clawback", "bonus": "clawback", "spend": "refund", "capture": "refund"}

# Every operation is drawn as one flat record; its kind says which fields it reads. The kinds
# are weighted (repeated) towards what moves credits.
KINDS = (
    ["topup", "bonus"] * 2 + ["spend"] * 2 + ["hold"] * 3 + ["capture"] * 3 + ["void"] * 2
    + ["transfer"] * 3 + ["reverse"] * 4 + ["replay", "reuse"]
)  # fmt: skip
OPERATION = st.tuples(
    st.sampled_from(KINDS),
    st.integers(min_value=0, max_value=N_USERS - 1),  # user (sender of a transfer)
    st.integers(min_value=1, max_value=N_USERS - 1),  # transfer receiver = user + this, mod N_USERS
    st.sampled_from(ASSETS),
    st.integers(min_value=1, max_value=300),  # amount
    st.integers(min_value=0, max_value=5),  # transfer fee
    # which earlier hold / transaction / request: even picks among those still open or
    # reversible (if any), odd ones among all
    st.integers(min_value=0, max_value=10_000),
    st.none() | st.integers(min_value=1, max_value=320),  # capture / reversal amount (None: all)
    st.booleans(),  # allow_negative
)
# Opening top-ups per (user, asset), posted before the operations (0: none).
OPENINGS = st.lists(
    st.integers(min_value=0, max_value=400), min_size=N_USERS * len(ASSETS), max_size=N_USERS * len(ASSETS)
)


def _pick(items: list[Any], live: list[Any], index: int) -> Any:
    pool = live if index % 2 == 0 and live else items
    return pool[(index // 2) % len(pool)] if pool else None


SQL = {
    "post": "SELECT * FROM wallet_post_transaction($1, $2, $3, $4, $5, $6, NULL, '{}')",
    "hold": "SELECT * FROM wallet_place_hold($1, $2, $3, $4, $5, 3600, NULL, '{}')",
    "capture": "SELECT * FROM wallet_capture_hold($1, $2, $3, $4, NULL, '{}')",
    "void": "SELECT * FROM wallet_void_hold($1, $2, $3)",
    "transfer": "SELECT * FROM wallet_post_transfer($1, $2, $3, $4, $5, $6, $7, NULL, '{}')",
    "reverse": "SELECT * FROM wallet_reverse_transaction($1, $2, $3, $4, NULL, '{}', $5)",
}


@dataclass
class Hold:
    id: str
    user: str
    asset: str
    amount: int
    status: str = "open"
    captured: int | None = None


@dataclass
class Posted:
    id: str
    type: str
    user: str
    asset: str
    amount: int
    reversed: int = 0


@dataclass
class Sent:
    function: str
    args: tuple
    key: str
    outcome: str
    body: str
    stored: bool  # refusals decided before the key is taken are not stored (not replays)


@dataclass
class Model:
    users: list[str]
    accounts: dict[tuple[str, str], list[int]] = field(default_factory=dict)  # [balance, held]
    holds: list[Hold] = field(default_factory=list)
    posted: list[Posted] = field(default_factory=list)
    sent: list[Sent] = field(default_factory=list)

    def account(self, user: str, asset_code: str) -> list[int]:
        return self.accounts.setdefault((user, asset_code), [0, 0])

    def available(self, user: str, asset_code: str) -> int:
        balance, held = self.account(user, asset_code)
        return balance - held


class Runner:
    def __init__(self, conn: asyncpg.Connection, api_key_id: int, model: Model) -> None:
        self.conn, self.api_key_id, self.model = conn, api_key_id, model
        self.seen: set[tuple[str, str, bool]] = set()  # (function, outcome, replayed)

    async def call(
        self, function: str, *args: Any, key: str | None = None
    ) -> tuple[str, dict, str, bool, str]:
        key = key or uuid.uuid4().hex
        row = await self.conn.fetchrow(SQL[function], self.api_key_id, key, *args)
        assert row is not None
        self.seen.add((function, row["outcome"], row["replayed"]))
        return row["outcome"], json.loads(row["body"]), row["body"], row["replayed"], key

    def record(
        self, function: str, args: tuple, key: str, outcome: str, raw: str, stored: bool = True
    ) -> None:
        self.model.sent.append(Sent(function, args, key, outcome, raw, stored))

    # --- one operation each; each checks the outcome and the body against the model ----------

    async def credit(self, type_: str, user: str, asset_code: str, amount_minor: int) -> None:
        account = self.model.account(user, asset_code)
        args = (type_, user, asset_code, amount_minor)
        outcome, body, raw, replayed, key = await self.call("post", *args)
        assert not replayed
        assert outcome == "posted", body
        account[0] += amount_minor
        assert (
            body["type"] == type_ and body["amount"] == amount_minor and body["balance_after"] == account[0]
        )
        self.model.posted.append(Posted(body["id"], type_, user, asset_code, amount_minor))
        self.record("post", args, key, outcome, raw)

    async def spend(self, user: str, asset_code: str, amount_minor: int) -> None:
        args = ("spend", user, asset_code, amount_minor)
        outcome, body, raw, _, key = await self.call("post", *args)
        account = self.model.account(user, asset_code)
        if self.model.available(user, asset_code) < amount_minor:
            assert outcome == "insufficient_funds", body
        else:
            assert outcome == "posted", body
            account[0] -= amount_minor
            assert body["balance_after"] == account[0]
            self.model.posted.append(Posted(body["id"], "spend", user, asset_code, amount_minor))
        self.record("post", args, key, outcome, raw)

    async def hold(self, user: str, asset_code: str, amount_minor: int) -> None:
        args = (user, asset_code, amount_minor)
        outcome, body, raw, _, key = await self.call("hold", *args)
        if self.model.available(user, asset_code) < amount_minor:
            assert outcome == "insufficient_funds", body
        else:
            assert outcome == "posted", body
            assert body["status"] == "open" and body["amount"] == amount_minor and body["user_id"] == user
            self.model.account(user, asset_code)[1] += amount_minor
            self.model.holds.append(Hold(body["id"], user, asset_code, amount_minor))
        self.record("hold", args, key, outcome, raw)

    def _hold_refusal(self, hold: Hold) -> str | None:
        return {"captured": "hold_already_captured", "voided": "hold_already_voided"}.get(hold.status)

    async def capture(self, index: int, amount_minor: int | None) -> None:
        hold = _pick(self.model.holds, [h for h in self.model.holds if h.status == "open"], index)
        if hold is None:
            return
        args = (uuid.UUID(hold.id), amount_minor)
        outcome, body, raw, _, key = await self.call("capture", *args)
        account = self.model.account(hold.user, hold.asset)
        taken = hold.amount if amount_minor is None else amount_minor
        if refusal := self._hold_refusal(hold):
            assert outcome == refusal, body
        elif taken > hold.amount:
            assert outcome == "amount_exceeds_hold", body
        elif account[0] - taken < 0:  # only for a user in debt
            assert outcome == "insufficient_funds", body
        else:
            assert outcome == "posted", body
            account[0] -= taken
            account[1] -= hold.amount
            hold.status, hold.captured = "captured", taken
            assert body["type"] == "capture" and body["hold_id"] == hold.id
            assert body["amount"] == taken and body["balance_after"] == account[0]
            self.model.posted.append(Posted(body["id"], "capture", hold.user, hold.asset, taken))
        self.record("capture", args, key, outcome, raw)

    async def void(self, index: int) -> None:
        hold = _pick(self.model.holds, [h for h in self.model.holds if h.status == "open"], index)
        if hold is None:
            return
        args = (uuid.UUID(hold.id),)
        outcome, body, raw, _, key = await self.call("void", *args)
        if refusal := self._hold_refusal(hold):
            assert outcome == refusal, body
        else:
            assert outcome == "applied", body
            assert body["status"] == "voided" and body["id"] == hold.id
            self.model.account(hold.user, hold.asset)[1] -= hold.amount
            hold.status = "voided"
        self.record("void", args, key, outcome, raw)

    async def transfer(
        self, sender: str, receiver: str, asset_code: str, amount_minor: int, fee: int
    ) -> None:
        to_account = self.model.account(receiver, asset_code)
        args = (sender, receiver, asset_code, amount_minor, fee)
        outcome, body, raw, _, key = await self.call("transfer", *args)
        from_account = self.model.account(sender, asset_code)
        if self.model.available(sender, asset_code) < amount_minor + fee:
            assert outcome == "insufficient_funds", body
        else:
            assert outcome == "posted", body
            from_account[0] -= amount_minor + fee
            to_account[0] += amount_minor
            assert body["type"] == "transfer" and body["user_id"] == sender
            assert body["counterparty_user_id"] == receiver and body["fee"] == fee
            assert body["balance_after"] == from_account[0]
            assert body["counterparty_balance_after"] == to_account[0]
            self.model.posted.append(Posted(body["id"], "transfer", sender, asset_code, amount_minor))
        self.record("transfer", args, key, outcome, raw)

    async def reverse(self, index: int, amount_minor: int | None, allow_negative: bool) -> None:
        live = [p for p in self.model.posted if p.type in REVERSIBLE and p.reversed < p.amount]
        original = _pick(self.model.posted, live, index)
        if original is None:
            return
        kind = REVERSIBLE.get(original.type)
        account = self.model.account(original.user, original.asset)
        remaining = original.amount - original.reversed
        taken = remaining if amount_minor is None else amount_minor
        args = (uuid.UUID(original.id), amount_minor, allow_negative)
        outcome, body, raw, replayed, key = await self.call("reverse", *args)
        assert not replayed
        if kind is None:
            assert outcome == "not_reversible", body
            self.record("reverse", args, key, outcome, raw, stored=False)
            return
        if remaining == 0 or taken > remaining:
            assert outcome == "amount_exceeds_reversible", body
        elif (
            kind == "clawback"
            and not allow_negative
            and self.model.available(original.user, original.asset) < taken
        ):
            assert outcome == "insufficient_funds", body
        else:
            assert outcome == "posted", body
            account[0] += taken if kind == "refund" else -taken
            original.reversed += taken
            assert body["type"] == kind and body["reverses"] == original.id
            assert body["amount"] == taken and body["balance_after"] == account[0]
            self.model.posted.append(Posted(body["id"], kind, original.user, original.asset, taken))
        self.record("reverse", args, key, outcome, raw)

    async def replay(self, index: int) -> None:
        """Retrying an earlier request with its key answers the stored body, verbatim."""
        if not self.model.sent:
            return
        sent = self.model.sent[index % len(self.model.sent)]
        outcome, _, raw, replayed, _ = await self.call(sent.function, *sent.args, key=sent.key)
        assert replayed is sent.stored
        assert outcome == sent.outcome
        assert raw == sent.body

    async def reuse(self, index: int) -> None:
        """An earlier key sent with another request is refused and changes nothing."""
        stored = [s for s in self.model.sent if s.stored]
        if not stored:
            return
        sent = stored[index % len(stored)]
        args = ("topup", self.model.users[0], "GOLD_COINS", 1)
        if (sent.function, sent.args) == ("post", args):
            args = ("topup", self.model.users[0], "GOLD_COINS", 2)
        outcome, body, _, replayed, _ = await self.call("post", *args, key=sent.key)
        assert outcome == "idempotency_key_reused" and not replayed, body

    async def apply(self, operation: tuple) -> None:
        kind, u, offset, asset_code, amount_minor, fee, index, some_amount, allow_negative = operation
        user = self.model.users[u]
        if kind in ("topup", "bonus"):
            await self.credit(kind, user, asset_code, amount_minor)
        elif kind == "spend":
            await self.spend(user, asset_code, amount_minor)
        elif kind == "hold":
            await self.hold(user, asset_code, amount_minor)
        elif kind == "capture":
            await self.capture(index, some_amount)
        elif kind == "void":
            await self.void(index)
        elif kind == "transfer":
            await self.transfer(user, self.model.users[(u + offset) % N_USERS], asset_code, amount_minor, fee)
        elif kind == "reverse":
            await self.reverse(index, some_amount, allow_negative)
        elif kind == "replay":
            await self.replay(index)
        elif kind == "reuse":
            await self.reuse(index)
        else:  # pragma: no cover
            raise AssertionError(kind)

    async def check_accounts(self) -> None:
        rows = await self.conn.fetch(
            "SELECT user_id, asset_code, balance_minor, held_minor FROM accounts WHERE user_id = ANY($1)",
            self.model.users,
        )
        for row in rows:
            expected = self.model.accounts.get((row["user_id"], row["asset_code"]), [0, 0])
            assert [row["balance_minor"], row["held_minor"]] == expected, (row, expected)


async def _run(
    database_url: str, operations: list[tuple], openings: list[int] | None = None
) -> set[tuple[str, str, bool]]:
    """Applies the operations, checking each against the model, then the final state; returns the
    (function, outcome, replayed) combinations seen."""
    conn = await asyncpg.connect(database_url)
    try:
        api_key_id = await conn.fetchval("SELECT id FROM api_keys WHERE name = 'test-admin'")
        users = [f"opm_{uuid.uuid4().hex[:10]}" for _ in range(N_USERS)]
        for user in users:
            await conn.execute("SELECT wallet_ensure_user($1, 'Model')", user)
        runner = Runner(conn, api_key_id, Model(users))
        for i, opening in enumerate(openings or []):
            if opening:
                await runner.credit("topup", users[i // len(ASSETS)], ASSETS[i % len(ASSETS)], opening)
        for operation in operations:
            await runner.apply(operation)
            await runner.check_accounts()

        model = runner.model
        # Balances and held, from the cache and from the ledger and the holds themselves.
        rows = await conn.fetch(
            "SELECT a.user_id, a.asset_code, a.balance_minor, a.held_minor,"
            " (SELECT coalesce(sum(e.amount_minor), 0) FROM ledger_entries e WHERE e.account_id = a.id) AS ledger,"
            " (SELECT coalesce(sum(h.amount_minor), 0) FROM holds h WHERE h.account_id = a.id AND h.status = 'open')"
            "   AS open_holds"
            " FROM accounts a WHERE a.user_id = ANY($1)",
            users,
        )
        for row in rows:
            balance, held = model.accounts.get((row["user_id"], row["asset_code"]), [0, 0])
            assert row["balance_minor"] == row["ledger"] == balance, dict(row)
            assert row["held_minor"] == row["open_holds"] == held, dict(row)
        # Every hold's status and captured amount.
        holds = {
            str(r["id"]): (r["status"], r["captured_amount_minor"])
            for r in await conn.fetch(
                "SELECT id, status, captured_amount_minor FROM holds WHERE user_id = ANY($1)", users
            )
        }
        assert holds == {h.id: (h.status, h.captured) for h in model.holds}
        # What was reversed of every transaction, as the transaction's document shows it.
        for posted in model.posted:
            document = json.loads(
                await conn.fetchval("SELECT wallet_transaction_json($1)::text", uuid.UUID(posted.id))
            )
            assert document["reversed_amount"] == posted.reversed, (posted, document)
        count = await conn.fetchval("SELECT count(*) FROM transactions WHERE user_id = ANY($1)", users)
        assert count == len(model.posted)
        report = await verify_ledger(conn)
        assert report.clean, report.render()
        return runner.seen
    finally:
        await conn.close()


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(openings=OPENINGS, operations=st.lists(OPERATION, min_size=20, max_size=60))
def test_ledger_operations_match_a_simple_model(database_url, keys, openings, operations):
    asyncio.run(_run(database_url, operations, openings))


def _op(
    kind: str,
    user: int = 0,
    asset_code: str = "GOLD_COINS",
    amount_minor: int = 1,
    *,
    to: int = 1,
    fee: int = 0,
    nth: int = 0,
    partial: int | None = None,
    allow_negative: bool = False,
) -> tuple:
    """One operation record; `nth` names the nth hold / transaction / request of all so far."""
    offset = (to - user) % N_USERS
    return (kind, user, offset or 1, asset_code, amount_minor, fee, 2 * nth + 1, partial, allow_negative)


def test_the_model_reaches_every_outcome_on_a_fixed_script(database_url, keys):
    """A fixed sequence that reaches every outcome at least once, so the property above cannot
    pass vacuously whatever hypothesis draws. Transactions are numbered in posting order."""
    script = [
        _op("topup", 0, amount_minor=100),  # tx 0
        _op("bonus", 1, amount_minor=50),  # tx 1
        _op("spend", 0, amount_minor=30),  # tx 2
        _op("spend", 1, amount_minor=51),  # insufficient_funds
        _op("hold", 0, amount_minor=40),  # hold 0
        _op("hold", 0, amount_minor=31),  # insufficient_funds: 70 - 40 held
        _op("capture", nth=0, partial=41),  # amount_exceeds_hold
        _op("capture", nth=0, partial=25),  # tx 3: partial capture, the other 15 released
        _op("void", nth=0),  # hold_already_captured
        _op("capture", nth=0),  # hold_already_captured
        _op("hold", 1, amount_minor=10),  # hold 1
        _op("void", nth=1),  # applied
        _op("capture", nth=1),  # hold_already_voided
        _op("transfer", 0, amount_minor=20, to=1, fee=2),  # tx 4
        _op("transfer", 2, amount_minor=1, to=0),  # insufficient_funds
        _op("reverse", nth=2, partial=10),  # tx 5: refund 10 of the spend of 30
        _op("reverse", nth=2, partial=21),  # amount_exceeds_reversible: 20 left
        _op("reverse", nth=2),  # tx 6: the other 20
        _op("reverse", nth=2),  # amount_exceeds_reversible: nothing left
        _op("reverse", nth=4),  # not_reversible: a transfer
        _op("reverse", nth=3, partial=5),  # tx 7: refund 5 of the capture
        _op("reverse", nth=1),  # tx 8: clawback of user 1's bonus, covered (70 available)
        _op("topup", 2, "DIAMONDS", 5),  # tx 9
        _op("spend", 2, "DIAMONDS", 5),  # tx 10
        _op("reverse", nth=9),  # clawback of tx 9: insufficient_funds, spent
        _op("reverse", nth=9, allow_negative=True),  # tx 11: an admin's; user 2 owes 5 DIAMONDS
        _op("hold", 2, "DIAMONDS", 1),  # insufficient_funds: in debt
        _op("topup", 2, "DIAMONDS", 5),  # tx 12: clears the debt exactly
        _op("replay", nth=0),
        _op("replay", nth=3),
        _op("replay", nth=8),
        _op("replay", nth=19),  # the not_reversible refusal: not stored, answered the same again
        _op("reuse", nth=4),  # idempotency_key_reused
    ]
    seen = asyncio.run(_run(database_url, script))
    assert seen >= {
        ("post", "posted", False),
        ("post", "insufficient_funds", False),
        ("post", "posted", True),
        ("post", "idempotency_key_reused", False),
        ("hold", "posted", False),
        ("hold", "insufficient_funds", False),
        ("capture", "posted", False),
        ("capture", "amount_exceeds_hold", False),
        ("capture", "hold_already_captured", False),
        ("capture", "hold_already_voided", False),
        ("void", "applied", False),
        ("void", "hold_already_captured", False),
        ("transfer", "posted", False),
        ("transfer", "insufficient_funds", False),
        ("reverse", "posted", False),
        ("reverse", "amount_exceeds_reversible", False),
        ("reverse", "not_reversible", False),
        ("reverse", "insufficient_funds", False),
    }, seen


# --- what the model steps around: service bugs, pinned down over HTTP --------------------------


async def _gold(client, user: str) -> dict[str, Any]:
    response = await client.get(f"/api/v1/wallets/{user}/balance")
    assert response.status_code == 200, response.text
    return next(b for b in response.json()["balances"] if b["asset_type"] == "GOLD_COINS")


async def _ok(client, path: str, body: dict) -> dict[str, Any]:
    response = await client.post(path, headers={"Idempotency-Key": new_key()}, json=body)
    assert response.status_code == 201, response.text
    return response.json()


async def _user_in_debt(admin, client, make_user) -> tuple[str, dict]:
    """A user at -45 after an admin clawback (as in tests/api/test_reversals.py); returns the spend."""
    user = await make_user()
    bonus = await _ok(
        admin, "/api/v1/transactions/bonus", {"user_id": user, "asset_type": "GOLD_COINS", "amount": 50}
    )
    spend = await _ok(
        client, "/api/v1/transactions/spend", {"user_id": user, "asset_type": "GOLD_COINS", "amount": 45}
    )
    await _ok(admin, f"/api/v1/transactions/{bonus['id']}/reverse", {"allow_negative": True})
    assert (await _gold(client, user))["balance"] == -45
    return user, spend


@pytest.mark.parametrize("credit", ["topup", "bonus", "refund", "transfer"])
async def test_a_partial_credit_to_a_user_in_debt_reduces_the_debt(admin, client, make_user, credit):
    user, spend = await _user_in_debt(admin, client, make_user)
    if credit in ("topup", "bonus"):
        path, body = (
            f"/api/v1/transactions/{credit}",
            {"user_id": user, "asset_type": "GOLD_COINS", "amount": 10},
        )
    elif credit == "refund":
        path, body = f"/api/v1/transactions/{spend['id']}/reverse", {"amount": 10}
    else:
        payer = await make_user(GOLD_COINS=50)
        path = "/api/v1/transactions/transfer"
        body = {"from_user_id": payer, "to_user_id": user, "asset_type": "GOLD_COINS", "amount": 10}
    response = await admin.post(path, headers={"Idempotency-Key": new_key()}, json=body)
    assert response.status_code == 201, response.text
    gold = await _gold(client, user)
    assert (gold["balance"], gold["debt"]) == (-35, 35)


@pytest.mark.parametrize("clawback", [50, 100])
async def test_an_admin_clawback_with_open_holds_is_not_a_500(admin, client, make_user, clawback):
    user = await make_user()
    topup = await _ok(
        admin, "/api/v1/transactions/topup", {"user_id": user, "asset_type": "GOLD_COINS", "amount": 100}
    )
    await _ok(client, "/api/v1/holds", {"user_id": user, "asset_type": "GOLD_COINS", "amount": 80})
    response = await admin.post(
        f"/api/v1/transactions/{topup['id']}/reverse",
        headers={"Idempotency-Key": new_key()},
        json={"amount": clawback, "allow_negative": True},
    )
    # An admin clawback is the one write allowed to leave a user short; it must not be a 500.
    assert response.status_code == 201, response.text
    gold = await _gold(client, user)
    assert gold["balance"] == 100 - clawback
