-- Credit lots: every credit a user holds belongs to a lot with an origin (`purchased` or
-- `granted`) and an optional expiry. Credits fill lots, debits draw from them in the asset's
-- spend order, and expired remainders leave the user in an `expiry` transaction into the
-- asset's SYSTEM_BREAKAGE account. What users hold is then split, to the unit, into what was paid
-- for (a liability, deferred revenue) and what was given.
--
-- A lot is the bucket of one account's credits of one origin and one expiry: all of a user's
-- purchased credits without expiry are one lot, each distinct bonus expiry another. So a user
-- has a handful of lots however many top-ups they made, and a spend sorts a handful of rows.
-- Each movement into or out of a lot is a row of lot_movements, written by the trigger on
-- ledger_entries (db/sql/functions/60_lots.sql) in the statement that writes the entries, under
-- the account's row lock that every posting holds: the open lots of a user account always sum to
-- its balance (or to zero while an admin clawback left it in debt), which the trigger asserts on
-- every debit and `wallet verify` / the live audit check.

-- No posting may run while the opening lots are computed from the balances.
LOCK TABLE accounts, ledger_entries IN SHARE ROW EXCLUSIVE MODE;

-- A breakage account for every asset that exists (new assets get theirs from wallet_ensure_asset,
-- which creates one account per wallet_rule_system_codes()).
INSERT INTO accounts (kind, system_code, asset_code)
    SELECT 'system', 'SYSTEM_BREAKAGE', code FROM asset_types
    ON CONFLICT DO NOTHING;

-- The API key under which the service posts what no caller asked for (expiries). Revoked from
-- birth, so it never authenticates; its hash is of bytes nobody holds.
CREATE TABLE system_api_keys (
    purpose    text PRIMARY KEY CHECK (purpose IN ('expiry')),
    api_key_id bigint NOT NULL UNIQUE REFERENCES api_keys (id)
);
WITH k AS (
    INSERT INTO api_keys (name, key_prefix, key_sha256, scopes, revoked_at)
    VALUES ('system: lot expiry', 'system', sha256(convert_to(gen_random_uuid()::text || clock_timestamp()::text, 'UTF8')),
            ARRAY['admin'], now())
    RETURNING id
)
INSERT INTO system_api_keys (purpose, api_key_id) SELECT 'expiry', id FROM k;

-- A credit's own expiry (a bonus given with expires_at or expires_in_seconds); without one, the
-- asset's policy decides. (The posting functions refuse an expires_at less than a second ahead;
-- not compared with created_at here, which is stamped after the row lock: a posting that waited
-- for it longer would fail instead of posting a lot that is due at once.)
ALTER TABLE transactions
    ADD COLUMN credit_expires_at timestamptz,
    ADD CONSTRAINT transactions_credit_expiry_only_lot_credits
        CHECK (credit_expires_at IS NULL OR wallet_rule_lot_origin(type) IS NOT NULL);

-- The earliest expiry among the account's open lots, kept by the lots trigger. Debits are
-- guarded by it (an account with an expired lot is first expired, under its row lock), and the
-- expiry sweep finds its accounts through it.
ALTER TABLE accounts
    ADD COLUMN lots_expire_at timestamptz,
    ADD CONSTRAINT accounts_lots_only_users CHECK (lots_expire_at IS NULL OR kind = 'user');
CREATE INDEX accounts_lots_expiring ON accounts (lots_expire_at) WHERE lots_expire_at IS NOT NULL;

-- Per asset: the spend order and the default expiries. Written from the settings
-- (WALLET_LOT_POLICIES) by `wallet serve`, `wallet migrate` and `wallet expire`; an asset without
-- a row spends granted before purchased and has no default expiry.
-- Not a foreign key: a policy may be configured before its asset is created.
CREATE TABLE asset_lot_policies (
    asset_code                   text PRIMARY KEY CHECK (asset_code ~ '^[A-Z][A-Z0-9_]{1,31}$'),
    spend_order                  text NOT NULL CHECK (spend_order = ANY (wallet_rule_spend_orders())),
    purchased_expires_in_seconds integer CHECK (purchased_expires_in_seconds > 0),
    granted_expires_in_seconds   integer CHECK (granted_expires_in_seconds > 0),
    updated_at                   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE credit_lots (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id      bigint NOT NULL,
    origin          text NOT NULL CHECK (origin = ANY (wallet_rule_lot_origins())),
    expires_at      timestamptz,
    remaining_minor bigint NOT NULL CHECK (remaining_minor >= 0),
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT credit_lots_one_per_origin_and_expiry UNIQUE NULLS NOT DISTINCT (account_id, origin, expires_at)
);

-- Signed: positive fills the lot, negative draws from it. transaction_id is NULL only for the
-- opening lots this migration writes for the balances that existed before lots.
CREATE TABLE lot_movements (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    transaction_id uuid,
    lot_id         bigint NOT NULL,
    amount_minor   bigint NOT NULL CHECK (amount_minor <> 0),
    created_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT lot_movements_once_per_transaction UNIQUE (transaction_id, lot_id)
);
CREATE INDEX lot_movements_by_lot ON lot_movements (lot_id);

-- Only a lot's remaining amount ever changes; movements are append-only.
CREATE TRIGGER credit_lots_identity_fixed BEFORE UPDATE ON credit_lots FOR EACH ROW
    WHEN (NEW.id <> OLD.id OR NEW.account_id <> OLD.account_id OR NEW.origin <> OLD.origin
          OR NEW.expires_at IS DISTINCT FROM OLD.expires_at OR NEW.created_at <> OLD.created_at)
    EXECUTE FUNCTION wallet_reject_change();
CREATE TRIGGER credit_lots_no_delete BEFORE DELETE ON credit_lots
    FOR EACH ROW EXECUTE FUNCTION wallet_reject_change();
CREATE TRIGGER credit_lots_no_truncate BEFORE TRUNCATE ON credit_lots
    FOR EACH STATEMENT EXECUTE FUNCTION wallet_reject_change();
CREATE TRIGGER lot_movements_append_only BEFORE UPDATE OR DELETE ON lot_movements
    FOR EACH ROW EXECUTE FUNCTION wallet_reject_change();
CREATE TRIGGER lot_movements_no_truncate BEFORE TRUNCATE ON lot_movements
    FOR EACH STATEMENT EXECUTE FUNCTION wallet_reject_change();

-- Transactions from this seq on were posted with lots (the checks of movements start there).
CREATE TABLE credit_lots_start (
    one       boolean PRIMARY KEY DEFAULT true CHECK (one),
    first_seq bigint NOT NULL
);
INSERT INTO credit_lots_start (first_seq) SELECT coalesce(max(seq), 0) + 1 FROM transactions;

-- Opening lots for the balances that exist: what is left of the net top-ups is purchased, the
-- rest granted (as if earlier spends had drawn granted credits first, the default order); no
-- expiry. Accounts in debt get none.
WITH opening AS (
    SELECT a.id AS account_id, a.balance_minor,
           least(a.balance_minor, greatest(coalesce((
               SELECT sum(CASE WHEN t.type = 'topup' THEN t.amount_minor ELSE -t.amount_minor END)
                 FROM transactions t LEFT JOIN transactions o ON o.id = t.reverses
                WHERE t.user_id = a.user_id AND t.asset_code = a.asset_code
                  AND (t.type = 'topup' OR (t.type = 'clawback' AND o.type = 'topup'))), 0), 0)) AS purchased
      FROM accounts a
     WHERE a.kind = 'user' AND a.balance_minor > 0
), lots AS (
    INSERT INTO credit_lots (account_id, origin, remaining_minor)
    SELECT o.account_id, s.origin, s.amount
      FROM opening o
     CROSS JOIN LATERAL (VALUES ('purchased', o.purchased), ('granted', o.balance_minor - o.purchased)) AS s(origin, amount)
     WHERE s.amount > 0
    RETURNING id, remaining_minor
)
INSERT INTO lot_movements (transaction_id, lot_id, amount_minor)
    SELECT NULL, id, remaining_minor FROM lots;

-- The live audit (GET /api/v1/audit): each run checks the transactions posted since the previous
-- one (seq in (from_seq, to_seq]) and every account's cached figures, and records its result.
CREATE TABLE audit_runs (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind        text NOT NULL CHECK (kind IN ('incremental', 'full')),
    from_seq    bigint NOT NULL,
    to_seq      bigint NOT NULL CHECK (to_seq >= from_seq),
    consistent  boolean NOT NULL,
    problems    jsonb NOT NULL,
    started_at  timestamptz NOT NULL,
    finished_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
-- The audit and the liability report read transactions in seq order from a point.
CREATE INDEX transactions_by_seq ON transactions (seq);

-- The lots trigger's body is installed by 60_lots.sql (run by this same migration, then by every
-- `wallet migrate`); the trigger itself is created right after it, see 0009_credit_lots.py.

-- A bonus may carry its own expiry: the single posting function and the fingerprint gain
-- trailing parameters (default NULL); the old signatures go, the new ones are installed from
-- db/sql/functions by this same `wallet migrate`.
DROP FUNCTION IF EXISTS wallet_post_transaction(bigint, text, text, text, text, bigint, text, jsonb, text);
DROP FUNCTION IF EXISTS wallet_posting_fingerprint(text, text, text, bigint, text, jsonb);

-- The live audit's position in each account's hash chain: links up to chain_no were checked by a
-- clean run, so the next one checks only the links after it.
CREATE TABLE audit_chain_marks (
    account_id bigint PRIMARY KEY,
    chain_no   bigint NOT NULL CHECK (chain_no >= 1)
);
