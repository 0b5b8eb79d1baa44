"""Property test of the ledger operations: any sequence of top-ups, bonuses (some expiring),
spends, holds (place, capture in whole or part, void), transfers with fees, partial or whole
refunds and clawbacks (with or without allow_negative), lots reaching their expiry and expiry runs,
retries of earlier keys and reuses of earlier keys for other requests, applied through the SQL
functions on one connection, lands exactly where a small in-memory model says: every outcome
(posted, insufficient_funds, amount_exceeds_reversible, hold_already_captured, ...), every
response's numbers and the credit lots it moved, after every step every account's open lots, and
at the end every balance, held amount, hold and reversed total in the database.

Time: a bonus's expiry is far in the future; the `age` operation makes one open lot due by moving
its expires_at into the past (with the lots' guard trigger off for that statement, the test's one
way of making time pass), `sweep` runs the expiry as `wallet expire` does, and every write path
expires an account's due lots first, as the model does.

Fairness, not only sums (README, credit lots): every answer's balance_after is the balance a read
shows right after it; a clawback draws only lots its original filled (an admin's into debt: those
first, as far as they hold its credits) and never more than its original less what of it
expired; a refund never fills a lot that has expired. The model keeps, per lot, what expired of
it, to know what each top-up or bonus may still lose to a clawback.

The last tests check over HTTP two cases this test found: credits to a user an admin clawback left
in debt (they repay part of it), and admin clawbacks while holds are open (not a 500).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support import new_key
from wallet.services.verify import verify_ledger
from wallet.services.wallets import BALANCES_SQL

ASSETS = ("GOLD_COINS", "DIAMONDS")
N_USERS = 3
REVERSIBLE = {"topup": "clawback", "bonus": "clawback", "spend": "refund", "capture": "refund"}

# Every operation is drawn as one flat record; its kind says which fields it reads. The kinds
# are weighted (repeated) towards what moves credits.
KINDS = (
    ["topup", "bonus"] * 2 + ["spend"] * 2 + ["hold"] * 3 + ["capture"] * 3 + ["void"] * 2
    + ["transfer"] * 3 + ["reverse"] * 4 + ["replay", "reuse"] + ["bonus_expiring"] * 2 + ["age"] * 2
    + ["sweep"]
)  # fmt: skip
# Expiries a bonus may carry: few, so lots of one expiry merge; all far ahead until aged.
BONUS_EXPIRIES = tuple(datetime(2100, 1, day, tzinfo=UTC) for day in (1, 2, 3))
AGED = datetime(2000, 1, 1, tzinfo=UTC)  # aged lots expire at AGED + n microseconds
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
    "post": "SELECT * FROM wallet_post_transaction($1, $2, $3, $4, $5, $6, NULL, '{}', NULL, $7)",
    "hold": "SELECT * FROM wallet_place_hold($1, $2, $3, $4, $5, 3600, NULL, '{}')",
    "capture": "SELECT * FROM wallet_capture_hold($1, $2, $3, $4, NULL, '{}')",
    "void": "SELECT * FROM wallet_void_hold($1, $2, $3)",
    "transfer": "SELECT * FROM wallet_post_transfer($1, $2, $3, $4, $5, $6, $7, NULL, '{}')",
    "reverse": "SELECT * FROM wallet_reverse_transaction($1, $2, $3, $4, NULL, '{}', $5)",
}


@dataclass(eq=False)
class Lot:
    """One account's bucket of credits of one origin and one expiry; `order` is the database's id
    order (the order lots were created in)."""

    origin: str
    expires: datetime | None
    order: int
    remaining: int = 0
    expired: int = 0  # drawn by expiries (breakage)

    @property
    def due(self) -> bool:
        return self.expires is not None and self.expires < BONUS_EXPIRIES[0]


def _iso(instant: datetime | None) -> str | None:
    return None if instant is None else instant.isoformat(timespec="microseconds").replace("+00:00", "Z")


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
    reverses: str | None = None
    lot_ids: frozenset[int] = frozenset()  # the database's ids of the lots it filled


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
    lots: dict[tuple[str, str], list[Lot]] = field(default_factory=dict)
    # Per posted transaction: the lots it moved, in order, with the account they belong to.
    moves: dict[str, list[tuple[tuple[str, str], Lot, int]]] = field(default_factory=dict)
    lots_created: int = 0
    expiries: int = 0  # expiry transactions posted (they have no request of their own)
    aged: int = 0

    def account(self, user: str, asset_code: str) -> list[int]:
        return self.accounts.setdefault((user, asset_code), [0, 0])

    def available(self, user: str, asset_code: str) -> int:
        balance, held = self.account(user, asset_code)
        return balance - held

    # --- credit lots, as db/sql/functions/60_lots.sql keeps them (default order: granted_first) --

    def fill(self, account: tuple[str, str], origin: str, expires: datetime | None, amount: int) -> Lot:
        lots = self.lots.setdefault(account, [])
        lot = next((x for x in lots if (x.origin, x.expires) == (origin, expires)), None)
        if lot is None:
            self.lots_created += 1
            lot = Lot(origin, expires, self.lots_created)
            lots.append(lot)
        lot.remaining += amount
        return lot

    def draw(
        self, account: tuple[str, str], amount: int, kind: str, first: list[Lot] | None = None
    ) -> list[tuple[Lot, int]]:
        def key(lot: Lot) -> tuple:
            return (
                (not lot.due) if kind in ("expiry", "capture") else lot.due,
                lot not in (first or []),
                kind != "expiry" and lot.origin != "granted",
                lot.expires is None,
                lot.expires or BONUS_EXPIRIES[0],
                lot.order,
            )

        taken = []
        for lot in sorted((x for x in self.lots.get(account, []) if x.remaining > 0), key=key):
            if amount == 0:
                break
            take = min(lot.remaining, amount)
            lot.remaining -= take
            amount -= take
            taken.append((lot, take))
        return taken

    def expire(self, account: tuple[str, str], keep: int = 0, incoming: int = 0) -> int:
        """What wallet_expire_lots does: due remainders out, as far as holds let them. (As
        wallet_expire_lots_for: less `keep`, for a capture; with `incoming` credits that follow.)"""
        balance, held = self.account(*account)
        due = sum(x.remaining for x in self.lots.get(account, []) if x.due)
        amount = min(max(due - keep, 0), max(balance + incoming - held, 0))
        if amount:
            for lot, taken in self.draw(account, amount, "expiry"):
                lot.expired += taken
            self.account(*account)[0] -= amount
            self.expiries += 1
        return amount

    def read(self, account: tuple[str, str]) -> int:
        """The balance a read shows: due credits left out, as far as holds let them go."""
        balance, held = self.account(*account)
        due = sum(x.remaining for x in self.lots.get(account, []) if x.due)
        return balance - min(due, max(balance - held, 0)) if balance > 0 else balance

    def clawback_credits(self, original: Posted) -> tuple[int, int]:
        """(left, expired) of the credits `original` gave, as wallet_clawback_credits counts them:
        per lot it filled, what it put there less what its clawbacks drew back from there, held
        by the lot while not due; and the least of that and what the lot lost to expiries."""
        account = (original.user, original.asset)
        left = expired = 0
        for acc, lot, filled in self.moves[original.id]:
            if acc != account or filled <= 0:
                continue
            own = filled + sum(
                amount
                for p in self.posted
                if p.reverses == original.id
                for _, drawn, amount in self.moves[p.id]
                if drawn is lot and amount < 0
            )
            own = max(own, 0)
            left += min(own, 0 if lot.due else lot.remaining)
            expired += min(own, lot.expired)
        return left, expired

    def open_lots(self) -> set[tuple[str, str, str, datetime | None, int]]:
        return {
            (user, asset, lot.origin, lot.expires, lot.remaining)
            for (user, asset), lots in self.lots.items()
            for lot in lots
            if lot.remaining > 0
        }


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

    async def read(self, user: str, asset_code: str) -> int:
        """The balance GET /wallets/{user}/balance shows now."""
        (only,) = json.loads(await self.conn.fetchval(BALANCES_SQL, user, asset_code))["balances"]
        return int(only["balance"])

    async def answered(self, account: tuple[str, str], balance_after: int) -> None:
        """Fairness: what a write answers is what a read right after it shows."""
        read = await self.read(*account)
        assert read == self.model.read(account) == balance_after, (account, balance_after, read)

    # --- one operation each; each checks the outcome and the body against the model ----------

    async def credit(
        self, type_: str, user: str, asset_code: str, amount_minor: int, expires: datetime | None = None
    ) -> None:
        account = self.model.account(user, asset_code)
        args = (type_, user, asset_code, amount_minor, expires)
        outcome, body, raw, replayed, key = await self.call("post", *args)
        assert not replayed
        assert outcome == "posted", body
        # Every write expires the account's due lots first; a credit also those a hold reserved,
        # as far as it replaces them.
        self.model.expire((user, asset_code), incoming=amount_minor)
        account[0] += amount_minor
        assert (
            body["type"] == type_ and body["amount"] == amount_minor and body["balance_after"] == account[0]
        )
        filled = min(amount_minor, max(account[0], 0))  # the rest repaid a debt
        moves = []
        if filled:
            origin = "purchased" if type_ == "topup" else "granted"
            moves = [
                ((user, asset_code), self.model.fill((user, asset_code), origin, expires, filled), filled)
            ]
        self.moved(body, moves)
        await self.answered((user, asset_code), body["balance_after"])
        filled = frozenset(m["lot_id"] for m in body["lots"] if m["amount"] > 0)
        self.model.posted.append(Posted(body["id"], type_, user, asset_code, amount_minor, lot_ids=filled))
        self.record("post", args, key, outcome, raw)

    def moved(self, body: dict, moves: list[tuple[tuple[str, str], Lot, int]]) -> None:
        """The lots the response says it moved are the model's."""
        self.model.moves[body["id"]] = moves
        assert [(m["origin"], m["expires_at"], m["amount"]) for m in body["lots"]] == [
            (lot.origin, _iso(lot.expires), amount) for _, lot, amount in moves
        ], (body["type"], body["lots"], moves)

    def drawn(self, account: tuple[str, str], taken: list[tuple[Lot, int]]) -> list:
        return [(account, lot, -amount) for lot, amount in taken]

    def expire_before_debit(self, user: str, asset_code: str) -> bool:
        """Every debit path expires the account's due lots first (returns True, to read in a chain
        of conditions)."""
        self.model.expire((user, asset_code))
        return True

    async def spend(self, user: str, asset_code: str, amount_minor: int) -> None:
        args = ("spend", user, asset_code, amount_minor, None)
        outcome, body, raw, _, key = await self.call("post", *args)
        account = self.model.account(user, asset_code)
        self.expire_before_debit(user, asset_code)
        if self.model.available(user, asset_code) < amount_minor:
            assert outcome == "insufficient_funds", body
        else:
            assert outcome == "posted", body
            account[0] -= amount_minor
            assert body["balance_after"] == account[0]
            self.moved(
                body,
                self.drawn((user, asset_code), self.model.draw((user, asset_code), amount_minor, "spend")),
            )
            await self.answered((user, asset_code), body["balance_after"])
            self.model.posted.append(Posted(body["id"], "spend", user, asset_code, amount_minor))
        self.record("post", args, key, outcome, raw)

    async def hold(self, user: str, asset_code: str, amount_minor: int) -> None:
        args = (user, asset_code, amount_minor)
        outcome, body, raw, _, key = await self.call("hold", *args)
        self.expire_before_debit(user, asset_code)
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
        elif self.expire_before_debit(hold.user, hold.asset) and account[0] - taken < 0:  # in debt
            assert outcome == "insufficient_funds", body
        else:
            assert outcome == "posted", body
            # A partial capture releases the rest first, and the expired credits only the rest
            # reserved expire, less what the capture takes of them (it draws expired lots first).
            account[1] -= hold.amount - taken
            self.model.expire((hold.user, hold.asset), keep=taken)
            account[0] -= taken
            account[1] -= taken
            self.moved(
                body,
                self.drawn(
                    (hold.user, hold.asset), self.model.draw((hold.user, hold.asset), taken, "capture")
                ),
            )
            await self.answered((hold.user, hold.asset), body["balance_after"])
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
        self.expire_before_debit(sender, asset_code)
        if self.model.available(sender, asset_code) < amount_minor + fee:
            assert outcome == "insufficient_funds", body
        else:
            assert outcome == "posted", body
            self.model.expire((receiver, asset_code), incoming=amount_minor)  # as a credit does
            from_account[0] -= amount_minor + fee
            to_account[0] += amount_minor
            taken = self.model.draw((sender, asset_code), amount_minor + fee, "transfer")
            moves = self.drawn((sender, asset_code), taken)
            left = min(amount_minor, max(to_account[0], 0))
            for lot, amount in taken:
                if left == 0:
                    break
                give = min(amount, left)
                received = self.model.fill((receiver, asset_code), lot.origin, lot.expires, give)
                moves.append(((receiver, asset_code), received, give))
                left -= give
            self.moved(body, moves)
            assert body["type"] == "transfer" and body["user_id"] == sender
            assert body["counterparty_user_id"] == receiver and body["fee"] == fee
            assert body["balance_after"] == from_account[0]
            assert body["counterparty_balance_after"] == to_account[0]
            await self.answered((sender, asset_code), body["balance_after"])
            await self.answered((receiver, asset_code), body["counterparty_balance_after"])
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
        args = (uuid.UUID(original.id), amount_minor, allow_negative)
        outcome, body, raw, replayed, key = await self.call("reverse", *args)
        assert not replayed
        if kind is None:
            assert outcome == "not_reversible", body
            self.record("reverse", args, key, outcome, raw, stored=False)
            return
        self.model.expire((original.user, original.asset))  # every reversal expires due lots first
        clawable = None
        if kind == "clawback":
            # What is left of its credits; an admin's debt: all but what of them expired.
            left, expired = self.model.clawback_credits(original)
            clawable = max(remaining - expired if allow_negative else min(remaining, left), 0)
        taken = amount_minor if amount_minor is not None else (clawable or remaining)
        if remaining == 0 or taken > remaining:
            assert outcome == "amount_exceeds_reversible", body
        elif clawable is not None and taken > clawable:
            assert outcome == "amount_exceeds_clawable", body
        elif (
            kind == "clawback"
            and not allow_negative
            and self.model.available(original.user, original.asset) < taken
        ):
            assert outcome == "insufficient_funds", body
        else:
            assert outcome == "posted", body
            if kind == "refund":
                self.model.expire((original.user, original.asset), incoming=taken)  # as a credit does
            account[0] += taken if kind == "refund" else -taken
            self.moved(body, self.reversal_moves(kind, original, taken, allow_negative))
            original.reversed += taken
            assert body["type"] == kind and body["reverses"] == original.id
            assert body["amount"] == taken and body["balance_after"] == account[0]
            self.fair(kind, original, body, allow_negative)
            await self.answered((original.user, original.asset), body["balance_after"])
            self.model.posted.append(
                Posted(body["id"], kind, original.user, original.asset, taken, reverses=original.id)
            )
        self.record("reverse", args, key, outcome, raw)

    def fair(self, kind: str, original: Posted, body: dict, allow_negative: bool) -> None:
        """What the answer's lots say, checked against the rules rather than the model."""
        if kind == "refund":
            # Never into a lot that has expired: every credit it gives back is usable.
            now = datetime.now(UTC)
            for lot in body["lots"]:
                assert lot["amount"] > 0, body["lots"]
                expires = lot["expires_at"]
                assert expires is None or datetime.fromisoformat(expires) > now, body["lots"]
            return
        origin = "purchased" if original.type == "topup" else "granted"
        own = [lot for lot in body["lots"] if lot["lot_id"] in original.lot_ids]
        others = [lot for lot in body["lots"] if lot["lot_id"] not in original.lot_ids]
        assert all(lot["amount"] < 0 and lot["origin"] == origin for lot in own), body["lots"]
        if not allow_negative:
            # No other credit (a purchased one for a granted one) is taken.
            assert not others, (original.type, body["lots"])
        elif others:
            # An admin's debt takes the user's other credits only once its own lots are empty.
            account = (original.user, original.asset)
            filled = [
                lot for acc, lot, amount in self.model.moves[original.id] if acc == account and amount > 0
            ]
            assert all(lot.remaining == 0 or lot.due for lot in filled), body["lots"]

    def reversal_moves(self, kind: str, original: Posted, taken: int, allow_negative: bool) -> list:
        account = (original.user, original.asset)
        if kind == "clawback":
            filled = [
                lot for acc, lot, amount in self.model.moves[original.id] if acc == account and amount > 0
            ]
            return self.drawn(account, self.model.draw(account, taken, "clawback", first=filled))
        # A refund restores what its original drew, last drawn first, after earlier refunds; what
        # it drew from a lot that has expired comes back in a lot of the same origin without
        # expiry (these assets have no default), each lot filled once.
        left = min(taken, max(self.model.account(*account)[0], 0))
        skip = sum(
            amount
            for p in self.model.posted
            if p.type == "refund" and p.reverses == original.id
            for _, _, amount in self.model.moves[p.id]
        )
        fills: dict[tuple[str, datetime | None], int] = {}
        for acc, lot, amount in reversed(self.model.moves[original.id]):
            if acc != account or amount >= 0 or left == 0:
                continue
            give = -amount - min(skip, -amount)
            skip -= min(skip, -amount)
            give = min(give, left)
            if give:
                target = (lot.origin, None if lot.due else lot.expires)
                fills[target] = fills.get(target, 0) + give
                left -= give
        if left:
            fills[("purchased", None)] = fills.get(("purchased", None), 0) + left
        return [
            (account, self.model.fill(account, origin, expires, amount), amount)
            for (origin, expires), amount in fills.items()
        ]

    async def bonus_expiring(self, user: str, asset_code: str, amount_minor: int, which: int) -> None:
        await self.credit(
            "bonus", user, asset_code, amount_minor, BONUS_EXPIRIES[which % len(BONUS_EXPIRIES)]
        )

    async def age(self, index: int) -> None:
        """Time passes for one lot with an expiry: it is due from now on. Lots drawn empty too: a
        refund of what was drawn from one must not fill it."""
        candidates = [
            (account, lot)
            for account, lots in self.model.lots.items()
            for lot in lots
            if lot.expires is not None and not lot.due
        ]
        if not candidates:
            return
        (user, asset_code), lot = candidates[index % len(candidates)]
        self.model.aged += 1
        aged = AGED + timedelta(microseconds=self.model.aged)
        async with self.conn.transaction():
            await self.conn.execute("SET LOCAL session_replication_role = replica")
            changed = await self.conn.execute(
                "UPDATE credit_lots l SET expires_at = $4 FROM accounts a"
                " WHERE a.id = l.account_id AND a.user_id = $1 AND a.asset_code = $2"
                "   AND l.origin = $3 AND l.expires_at = $5",
                user, asset_code, lot.origin, aged, lot.expires,
            )  # fmt: skip
            assert changed == "UPDATE 1"
            await self.conn.execute(  # the cached earliest expiry is of open lots only
                "UPDATE accounts SET lots_expire_at = least(lots_expire_at, $3)"
                " WHERE user_id = $1 AND asset_code = $2 AND $4",
                user,
                asset_code,
                aged,
                lot.remaining > 0,
            )
        lot.expires = aged

    async def sweep(self) -> None:
        """`wallet expire`: every account with due credits that holds do not keep."""
        await self.conn.fetchrow("SELECT * FROM wallet_sweep_expired_lots(100000)")
        for account in list(self.model.lots):
            balance, held = self.model.account(*account)
            if balance > held:
                self.model.expire(account)

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
        args = ("topup", self.model.users[0], "GOLD_COINS", 1, None)
        if (sent.function, sent.args) == ("post", args):
            args = ("topup", self.model.users[0], "GOLD_COINS", 2, None)
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
        elif kind == "bonus_expiring":
            await self.bonus_expiring(user, asset_code, amount_minor, index)
        elif kind == "age":
            await self.age(index)
        elif kind == "sweep":
            await self.sweep()
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
        lots = await self.conn.fetch(
            "SELECT a.user_id, a.asset_code, l.origin, l.expires_at, l.remaining_minor FROM credit_lots l"
            " JOIN accounts a ON a.id = l.account_id WHERE a.user_id = ANY($1) AND l.remaining_minor > 0",
            self.model.users,
        )
        assert {tuple(r) for r in lots} == self.model.open_lots()


async def _run(database_url: str, operations: list[tuple], openings: list[int] | None = None) -> Runner:
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
        assert count == len(model.posted) + model.expiries
        report = await verify_ledger(conn)
        assert report.clean, report.render()
        return runner
    finally:
        await conn.close()


@pytest.mark.slow
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
        _op("reverse", nth=9),  # clawback of tx 9: amount_exceeds_clawable, all spent
        _op("reverse", nth=9, allow_negative=True),  # tx 11: an admin's; user 2 owes 5 DIAMONDS
        _op("hold", 2, "DIAMONDS", 1),  # insufficient_funds: in debt
        _op("topup", 2, "DIAMONDS", 5),  # tx 12: clears the debt exactly
        _op("replay", nth=0),
        _op("replay", nth=3),
        _op("replay", nth=8),
        _op("replay", nth=19),  # the not_reversible refusal: not stored, answered the same again
        _op("reuse", nth=4),  # idempotency_key_reused
        # Expiring bonuses (user 1 holds 20 purchased): lots of one expiry merge; a due lot is
        # expired before a spend, in part when a hold reserves the rest, the sweep takes what the
        # voided hold let go, and a transfer expires the sender's other due lot first.
        _op("bonus_expiring", 1, amount_minor=5, nth=1),  # lot A: 5, expiring on day 1
        _op("bonus_expiring", 1, amount_minor=30, nth=0),  # lot B, day 2
        _op("bonus_expiring", 1, amount_minor=20, nth=0),  # the same lot B: 50
        _op("hold", 1, amount_minor=60),  # hold 2: 60 of the 75
        _op("age", nth=0),  # lot B is due
        _op("spend", 1, amount_minor=1),  # expiry 1: 15 of B (the hold keeps 35); then short
        _op("topup", 1, amount_minor=10),  # tx 16; expiry 2: 10 of B, the hold rests on the top-up
        _op("void", nth=2),
        _op("sweep"),  # expiry 3: the other 25 of B
        _op("spend", 1, amount_minor=3),  # tx 17
        _op("age", nth=0),  # lot A is due
        _op("transfer", 1, amount_minor=4, to=0),  # tx 18; expiry 4: what is left of A
        # Fair when credits expired: bonus A (tx 13) was partly spent (tx 17) and the rest expired.
        _op("reverse", nth=13),  # amount_exceeds_clawable: nothing of it is left
        _op("reverse", nth=13, partial=5, allow_negative=True),  # amount_exceeds_clawable: part expired
        _op("reverse", nth=13, allow_negative=True),  # tx 19: an admin's takes back the spent part
        _op("reverse", nth=17),  # tx 20: the spend drew lot A, expired: refunded into a usable lot
        _op("topup", 2, amount_minor=10),  # tx 21
        _op("hold", 2, amount_minor=10),  # hold 3
        _op("reverse", nth=21),  # insufficient_funds: its 10 are left, all held
    ]
    runner = asyncio.run(_run(database_url, script))
    seen = runner.seen
    # The fairness steps did what their comments say.
    tail = [(p.type, p.amount, p.reverses) for p in runner.model.posted[16:]]
    bonus_a, spend = runner.model.posted[13].id, runner.model.posted[17].id
    assert tail[3:5] == [("clawback", 3, bonus_a), ("refund", 3, spend)], tail
    # The expiry steps did what their comments say (the model checked every lot after each).
    assert runner.model.expiries == 4, runner.model.expiries
    assert runner.model.aged == 2
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
        ("reverse", "amount_exceeds_clawable", False),
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
