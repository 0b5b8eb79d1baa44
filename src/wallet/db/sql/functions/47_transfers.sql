-- Re-installed by every `wallet migrate` (after the versioned migrations); see wallet.db.migrate.
-- Transfers between users (gifts, trades): the sender pays the amount to the receiver and the
-- fee, if any, to SYSTEM_REVENUE, in one transaction of three entries (two without a fee).
--
-- One posting of the core (wallet_post), three legs (two without a fee).
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
    v_posting wallet_posting;
    v_posted record;
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

    -- Both accounts are locked in ascending id by the core; the receiver's due lots are expired
    -- first (those a hold reserved as far as this credit replaces them), so
    -- counterparty_balance_after is what a balance read right after says.
    v_posting.type := 'transfer';
    v_posting.api_key_id := p_api_key_id;
    v_posting.idempotency_key := p_idempotency_key;
    v_posting.request_id := p_request_id;
    v_posting.user_id := p_from_user_id;
    v_posting.asset_code := p_asset_code;
    v_posting.amount_minor := p_amount_minor;
    v_posting.description := p_description;
    v_posting.metadata := p_metadata;
    v_posting.counterparty_user_id := p_to_user_id;
    v_posting.fee_minor := p_fee_minor;
    v_posting.account_ids := ARRAY[v_from_account_id, v_to_account_id];
    v_posting.amounts_minor := ARRAY[-v_debit_minor, p_amount_minor];
    IF p_fee_minor > 0 THEN
        v_posting.account_ids := v_posting.account_ids || v_revenue_account_id;
        v_posting.amounts_minor := v_posting.amounts_minor || p_fee_minor;
    END IF;
    v_posting.covered_by := 'available';
    SELECT p.transaction_id, p.document INTO v_posted FROM wallet_post(ARRAY[v_posting], true) AS p;
    IF v_posted.transaction_id IS NULL THEN
        outcome := 'insufficient_funds';
        body := wallet_insufficient_funds_body(p_from_user_id, p_asset_code, v_debit_minor);
    ELSE
        outcome := 'posted';
        body := v_posted.document;
    END IF;
    PERFORM wallet_idempotency_store_one(p_api_key_id, p_idempotency_key, v_fingerprint, outcome, body,
                                         v_posted.transaction_id);
END $$;
