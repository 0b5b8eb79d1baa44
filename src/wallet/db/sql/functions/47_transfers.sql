-- Re-installed by every `wallet migrate` (after the versioned migrations); see wallet.db.migrate.
-- Transfers between users (gifts, trades): the sender pays the amount to the receiver and the
-- fee, if any, to SYSTEM_REVENUE, in one transaction of three entries (two without a fee).
--
-- Lock order: the idempotency key, then both users' account rows in ascending id, in one
-- statement; two transfers crossing the same users in opposite directions lock them in the same
-- order and cannot deadlock.
CREATE OR REPLACE FUNCTION wallet_post_transfer(
    p_api_key_id bigint, p_idempotency_key text, p_from_user_id text, p_to_user_id text,
    p_asset_code text, p_amount_minor bigint, p_fee_minor bigint, p_description text, p_metadata jsonb,
    p_request_id text DEFAULT NULL,
    OUT outcome text, OUT body jsonb, OUT replayed boolean)
LANGUAGE plpgsql AS $$
DECLARE
    v_fingerprint bytea;
    v_from_account_id bigint;
    v_to_account_id bigint;
    v_revenue_account_id bigint;
    v_debit_minor bigint;
    v_from_balance_minor bigint;
    v_to_balance_minor bigint;
    v_transaction_id uuid;
BEGIN
    replayed := false;
    p_fee_minor := coalesce(p_fee_minor, 0);
    p_metadata := coalesce(p_metadata, '{}'::jsonb);
    IF p_amount_minor IS NULL OR p_amount_minor <= 0 OR p_fee_minor < 0 OR p_from_user_id = p_to_user_id THEN
        RAISE EXCEPTION 'invalid transfer: amount %, fee %, from % to %', p_amount_minor, p_fee_minor,
            p_from_user_id, p_to_user_id USING ERRCODE = 'check_violation';
    END IF;
    v_debit_minor := p_amount_minor + p_fee_minor;
    v_fingerprint := sha256(convert_to(jsonb_build_object(
        'operation', 'transfer', 'from_user_id', p_from_user_id, 'to_user_id', p_to_user_id,
        'asset_type', p_asset_code, 'amount', p_amount_minor, 'fee', p_fee_minor,
        'description', p_description, 'metadata', p_metadata)::text, 'UTF8'));

    -- The key first: a retry is answered from what was stored, whatever has changed since in
    -- the reference data (an asset deactivated, a user's id mistyped in the retry).
    SELECT l.outcome, l.body, l.replayed INTO outcome, body, replayed
        FROM wallet_idempotency_lookup(p_api_key_id, p_idempotency_key, v_fingerprint) AS l;
    IF outcome IS NOT NULL THEN
        RETURN;
    END IF;

    SELECT f.id, t.id, s.id INTO v_from_account_id, v_to_account_id, v_revenue_account_id
        FROM asset_types a
        JOIN accounts f ON f.user_id = p_from_user_id AND f.asset_code = a.code
        JOIN accounts t ON t.user_id = p_to_user_id AND t.asset_code = a.code
        JOIN accounts s ON s.system_code = wallet_rule_system_account('transfer') AND s.asset_code = a.code
        WHERE a.code = p_asset_code AND a.is_active;
    IF NOT FOUND THEN
        IF EXISTS (SELECT 1 FROM users WHERE id = p_from_user_id) THEN
            SELECT m.outcome, m.body INTO outcome, body
              FROM wallet_missing_account(p_to_user_id, p_asset_code, 'to_user_id', 'asset_type') m;
        ELSE
            SELECT m.outcome, m.body INTO outcome, body
              FROM wallet_missing_account(p_from_user_id, p_asset_code, 'from_user_id', 'asset_type') m;
        END IF;
        RETURN;
    END IF;

    PERFORM 1 FROM accounts WHERE id IN (v_from_account_id, v_to_account_id) ORDER BY id FOR UPDATE;
    FOR v_attempt IN 1..2 LOOP
        UPDATE accounts SET balance_minor = balance_minor - v_debit_minor
         WHERE id = v_from_account_id AND balance_minor - held_minor - v_debit_minor >= 0
           AND NOT coalesce(lots_expire_at <= clock_timestamp(), false)
         RETURNING balance_minor INTO v_from_balance_minor;
        EXIT WHEN FOUND OR wallet_release_expired(v_from_account_id) = 0;
    END LOOP;
    IF v_from_balance_minor IS NULL THEN
        outcome := 'insufficient_funds';
        body := wallet_error_body(outcome,
            format('available balance of %s %s is less than %s', p_from_user_id, p_asset_code, v_debit_minor),
            'amount');
    ELSE
        -- The receiver's due lots are expired first (those a hold reserved as far as this credit
        -- replaces them), so counterparty_balance_after is what a balance read right after says.
        PERFORM wallet_expire_lots_for(a.id, 0, p_amount_minor) FROM accounts a
         WHERE a.id = v_to_account_id AND a.lots_expire_at <= clock_timestamp();
        UPDATE accounts SET balance_minor = balance_minor + p_amount_minor WHERE id = v_to_account_id
            RETURNING balance_minor INTO v_to_balance_minor;
        WITH posted AS (
            INSERT INTO transactions (type, api_key_id, idempotency_key, user_id, asset_code, amount_minor,
                                      balance_after_minor, description, metadata, counterparty_user_id,
                                      counterparty_balance_after_minor, fee_minor, request_id)
            VALUES ('transfer', p_api_key_id, p_idempotency_key, p_from_user_id, p_asset_code, p_amount_minor,
                    v_from_balance_minor, p_description, p_metadata, p_to_user_id, v_to_balance_minor, p_fee_minor,
                    p_request_id)
            RETURNING id
        ), entries AS (
            INSERT INTO ledger_entries (transaction_id, entry_no, account_id, asset_code, amount_minor)
            SELECT posted.id, side.entry_no, side.account_id, p_asset_code, side.amount_minor
            FROM posted CROSS JOIN (VALUES (1::smallint, v_from_account_id, -v_debit_minor),
                                           (2::smallint, v_to_account_id, p_amount_minor),
                                           (3::smallint, v_revenue_account_id, p_fee_minor))
                                   AS side(entry_no, account_id, amount_minor)
            WHERE side.amount_minor <> 0
        )
        SELECT id INTO v_transaction_id FROM posted;
        outcome := 'posted';
        body := wallet_transaction_json(v_transaction_id);
    END IF;
    INSERT INTO idempotency_keys (api_key_id, key, request_sha256, outcome, response_body)
        VALUES (p_api_key_id, p_idempotency_key, v_fingerprint, outcome, body);
END $$;
