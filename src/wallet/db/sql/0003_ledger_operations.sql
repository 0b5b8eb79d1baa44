-- Ledger operations: reversals (refund, clawback), holds (place, capture, void, expire),
-- transfers between users, and balances as of a time. Every one posts through the same
-- invariants as before (balanced entries written with their transaction, append-only history);
-- this migration adds what each needs and the rules that bind them.

-- Transaction times come from the clock at the moment of writing, not from the start of the
-- database transaction: a posting waits for the user's row lock first, so per account the times
-- then follow the order in which postings were applied, and "the balance as of T" is the
-- balance after the last posting stamped at or before T.
ALTER TABLE transactions ALTER COLUMN created_at SET DEFAULT clock_timestamp();
ALTER TABLE ledger_entries ALTER COLUMN created_at SET DEFAULT clock_timestamp();

ALTER TABLE transactions
    -- refund / clawback: the transaction it reverses (same user and asset).
    ADD COLUMN reverses uuid,
    -- transfer: the receiving user, and their balance right after it.
    ADD COLUMN counterparty_user_id text,
    ADD COLUMN counterparty_balance_after_minor bigint,
    -- transfer: the fee the sender paid to SYSTEM_REVENUE on top of the amount.
    ADD COLUMN fee_minor bigint NOT NULL DEFAULT 0,
    -- capture: the hold it captured.
    ADD COLUMN hold_id uuid,
    -- clawback by an admin that was allowed to leave the user in debt.
    ADD COLUMN allow_negative boolean NOT NULL DEFAULT false,
    ADD CONSTRAINT transactions_reverses_only_reversals
        CHECK ((reverses IS NOT NULL) = (type IN ('refund', 'clawback'))),
    ADD CONSTRAINT transactions_counterparty_only_transfers
        CHECK ((counterparty_user_id IS NOT NULL) = (type = 'transfer')
               AND (counterparty_user_id IS NULL) = (counterparty_balance_after_minor IS NULL)
               AND counterparty_user_id IS DISTINCT FROM user_id),
    ADD CONSTRAINT transactions_fee_only_transfers
        CHECK (fee_minor >= 0 AND fee_minor <= wallet_rule_amount_minor_ceiling()
               AND (fee_minor = 0 OR type = 'transfer')),
    ADD CONSTRAINT transactions_hold_only_captures CHECK ((hold_id IS NOT NULL) = (type = 'capture')),
    ADD CONSTRAINT transactions_negative_only_admin_clawbacks CHECK (NOT allow_negative OR type = 'clawback'),
    DROP CONSTRAINT transactions_balance_after_minor_check,
    -- A balance below zero after a debit: only a clawback an admin allowed to leave a debt. (A
    -- credit may leave a balance below zero: it repays part of an earlier debt.)
    ADD CONSTRAINT transactions_balance_after_covered
        CHECK (balance_after_minor >= 0 OR allow_negative OR wallet_rule_user_sign(type) > 0);

-- Held amounts are never negative; that they stay covered by the balance is the trigger below.
ALTER TABLE accounts
    DROP CONSTRAINT user_balance_never_negative,
    ADD CONSTRAINT user_held_not_negative CHECK (kind <> 'user' OR held_minor >= 0);

-- What is available (balance - held) never drops below zero, and once below zero (after an
-- admin clawback) it only gets worse inside a transaction that declared it may: the admin
-- clawback sets wallet.allow_negative for its own transaction and records allow_negative on the
-- clawback it writes. Credits and releases (available going up) are always allowed: they repay
-- the shortfall first. The WHEN clause is evaluated without calling the function, so the check
-- costs nothing on the usual update.
CREATE FUNCTION wallet_accounts_guard_available() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.kind = 'user' AND coalesce(current_setting('wallet.allow_negative', true), '') <> 'on' THEN
        RAISE EXCEPTION 'account % would go to balance % with % held: only an admin clawback may leave a user short',
            NEW.id, NEW.balance_minor, NEW.held_minor USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER accounts_available_not_negative BEFORE UPDATE ON accounts FOR EACH ROW
    WHEN (NEW.held_minor > NEW.balance_minor
          AND NEW.balance_minor - NEW.held_minor < OLD.balance_minor - OLD.held_minor)
    EXECUTE FUNCTION wallet_accounts_guard_available();
CREATE TRIGGER accounts_born_available BEFORE INSERT ON accounts FOR EACH ROW
    WHEN (NEW.held_minor > NEW.balance_minor)
    EXECUTE FUNCTION wallet_accounts_guard_available();

-- History as of a time (the balance at T is the newest posting of the account at or before T),
-- and the transfers a user received.
CREATE INDEX transactions_user_asset_time ON transactions (user_id, asset_code, created_at, seq);
CREATE INDEX transactions_counterparty_history ON transactions (counterparty_user_id, seq DESC)
    WHERE counterparty_user_id IS NOT NULL;
CREATE INDEX transactions_counterparty_asset_time ON transactions (counterparty_user_id, asset_code, created_at, seq)
    WHERE counterparty_user_id IS NOT NULL;
CREATE INDEX transactions_reversals ON transactions (reverses) WHERE reverses IS NOT NULL;

-- How much of each reversed transaction has been reversed so far. Maintained by the trigger
-- below from the reversals themselves, so it cannot disagree with them, and bounded by the
-- original's amount: the sum of partial reversals can never exceed the original.
CREATE TABLE reversal_totals (
    transaction_id          uuid PRIMARY KEY,
    original_amount_minor   bigint NOT NULL,
    reversed_amount_minor   bigint NOT NULL,
    CONSTRAINT reversal_total_within_original
        CHECK (reversed_amount_minor > 0 AND reversed_amount_minor <= original_amount_minor)
);
CREATE TRIGGER reversal_totals_no_delete BEFORE DELETE ON reversal_totals
    FOR EACH ROW EXECUTE FUNCTION wallet_reject_change();
CREATE TRIGGER reversal_totals_no_truncate BEFORE TRUNCATE ON reversal_totals
    FOR EACH STATEMENT EXECUTE FUNCTION wallet_reject_change();

-- Holds: credits reserved for a user until captured (spent), voided or expired. The account's
-- cached held_minor is the sum of its holds in status 'open', updated under the account's row
-- lock. An open hold past its expiry no longer counts for anyone from that instant (reads and
-- spends compute it so); the database then marks it 'expired' and releases it.
CREATE TABLE holds (
    id                      uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    seq                     bigint GENERATED ALWAYS AS IDENTITY,
    api_key_id              bigint NOT NULL REFERENCES api_keys (id),
    idempotency_key         text NOT NULL,
    user_id                 text NOT NULL REFERENCES users (id),
    asset_code              text NOT NULL,
    account_id              bigint NOT NULL REFERENCES accounts (id),
    amount_minor            bigint NOT NULL
                            CHECK (amount_minor > 0 AND amount_minor <= wallet_rule_amount_minor_ceiling()),
    status                  text NOT NULL DEFAULT 'open' CHECK (status = ANY (wallet_rule_hold_statuses())),
    captured_amount_minor   bigint,
    capture_transaction_id  uuid,
    description             text CHECK (length(description) <= wallet_rule_description_max_chars()),
    metadata                jsonb NOT NULL DEFAULT '{}'::jsonb
                            CHECK (jsonb_typeof(metadata) = 'object'
                                   AND pg_column_size(metadata) <= wallet_rule_metadata_max_bytes()),
    created_at              timestamptz NOT NULL DEFAULT clock_timestamp(),
    expires_at              timestamptz NOT NULL,
    closed_at               timestamptz,
    CONSTRAINT hold_expires_after_creation CHECK (expires_at > created_at),
    CONSTRAINT hold_closed_unless_open CHECK ((status = 'open') = (closed_at IS NULL)),
    CONSTRAINT hold_capture_recorded
        CHECK ((status = 'captured') = (capture_transaction_id IS NOT NULL)
               AND (status = 'captured') = (captured_amount_minor IS NOT NULL)
               AND (captured_amount_minor IS NULL OR captured_amount_minor BETWEEN 1 AND amount_minor))
);
CREATE INDEX holds_open_by_account ON holds (account_id, expires_at) WHERE status = 'open';
CREATE INDEX holds_by_user ON holds (user_id, seq DESC);
CREATE INDEX holds_open_by_expiry ON holds (expires_at) WHERE status = 'open';

-- A hold changes once: from open to captured, voided or expired, and nothing else about it.
CREATE FUNCTION wallet_holds_guard_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status <> 'open' OR NEW.status = 'open'
       OR (to_jsonb(NEW) - ARRAY['status', 'captured_amount_minor', 'capture_transaction_id', 'closed_at'])
          IS DISTINCT FROM
          (to_jsonb(OLD) - ARRAY['status', 'captured_amount_minor', 'capture_transaction_id', 'closed_at']) THEN
        RAISE EXCEPTION 'hold % is % and can only go from open to captured, voided or expired', OLD.id, OLD.status
            USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER holds_change_once BEFORE UPDATE ON holds
    FOR EACH ROW EXECUTE FUNCTION wallet_holds_guard_update();
CREATE TRIGGER holds_no_delete BEFORE DELETE ON holds
    FOR EACH ROW EXECUTE FUNCTION wallet_reject_change();
CREATE TRIGGER holds_no_truncate BEFORE TRUNCATE ON holds
    FOR EACH STATEMENT EXECUTE FUNCTION wallet_reject_change();

-- The per-statement check of new transactions gains the rules of reversals: a reversal names an
-- existing transaction of the same user and asset, of a type its own type reverses, and the
-- running total of what was reversed (reversal_totals) moves with it, within the original's
-- amount. A capture names a hold of the same user and asset.
CREATE OR REPLACE FUNCTION wallet_transactions_check() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_incomplete uuid;
    v_bad_reversal uuid;
BEGIN
    SELECT n.id INTO v_incomplete
      FROM new_transactions n
      LEFT JOIN ledger_entries e ON e.transaction_id = n.id AND e.entry_no = 2
     WHERE e.transaction_id IS NULL
     LIMIT 1;
    IF v_incomplete IS NOT NULL THEN
        RAISE EXCEPTION 'transaction % must be written together with its ledger entries (at least 2)',
            v_incomplete USING ERRCODE = 'check_violation';
    END IF;
    IF EXISTS (SELECT 1 FROM new_transactions WHERE reverses IS NOT NULL OR hold_id IS NOT NULL) THEN
        SELECT n.id INTO v_bad_reversal
          FROM new_transactions n
          LEFT JOIN transactions o ON o.id = n.reverses
          LEFT JOIN holds h ON h.id = n.hold_id
         WHERE (n.reverses IS NOT NULL
                AND (o.id IS NULL OR o.user_id <> n.user_id OR o.asset_code <> n.asset_code
                     OR wallet_rule_reversed_by(o.type) IS DISTINCT FROM n.type))
            OR (n.hold_id IS NOT NULL
                AND (h.id IS NULL OR h.user_id <> n.user_id OR h.asset_code <> n.asset_code
                     OR n.amount_minor > h.amount_minor))
         LIMIT 1;
        IF v_bad_reversal IS NOT NULL THEN
            RAISE EXCEPTION 'transaction % reverses or captures something it cannot', v_bad_reversal
                USING ERRCODE = 'check_violation';
        END IF;
        INSERT INTO reversal_totals AS r (transaction_id, original_amount_minor, reversed_amount_minor)
            SELECT n.reverses, o.amount_minor, sum(n.amount_minor)
              FROM new_transactions n JOIN transactions o ON o.id = n.reverses
             GROUP BY n.reverses, o.amount_minor
        ON CONFLICT (transaction_id) DO UPDATE
            SET reversed_amount_minor = r.reversed_amount_minor + EXCLUDED.reversed_amount_minor;
    END IF;
    RETURN NULL;
END $$;
