-- Re-installed by every `wallet migrate` (after the versioned migrations); see wallet.db.migrate.
-- Posting.

-- Posts a top-up, bonus or spend for one user, idempotently.
--
-- Order of work, which is also the lock order (deadlock-free: every caller takes at most one
-- idempotency lock, then user account rows, always in this order):
--   1. take the key's lock; a stored outcome for it is replayed (before anything else about the
--      request is looked at, so a replay does not depend on today's reference data);
--   2. resolve the user's and the system account (no lock); unknown user or asset ->
--      `user_not_found` / `asset_type_not_found`, nothing written, nothing stored;
--   3. the user's cached balance is updated under its row lock only if it stays covered and
--      none of the account's lots has expired (else holds and lots past their time are released
--      and expired, and the update is tried once more; a credit expires due lots before it);
--      a short balance -> `insufficient_funds`, stored;
--   4. in one statement, update the balance and write the transaction and its two entries
--      (the system account row is never locked);
--   5. store the response under the key.
-- Returns the outcome (a catalogue code), the response body and whether it is a replay.
CREATE OR REPLACE FUNCTION wallet_post_transaction(
    p_api_key_id bigint, p_idempotency_key text, p_type text, p_user_id text, p_asset_code text,
    p_amount_minor bigint, p_description text, p_metadata jsonb, p_request_id text DEFAULT NULL,
    p_expires_at timestamptz DEFAULT NULL, p_expires_in_seconds integer DEFAULT NULL,
    OUT outcome text, OUT body jsonb, OUT replayed boolean)
LANGUAGE plpgsql AS $$
DECLARE
    v_fingerprint bytea;
    v_user_account_id bigint;
    v_system_account_id bigint;
    v_system_code text := wallet_rule_system_account(p_type);
    v_delta_minor bigint;
    v_transaction_id uuid;
    v_balance_after_minor bigint;
    v_created_at timestamptz;
    v_attempt integer;
BEGIN
    replayed := false;
    IF p_amount_minor IS NULL OR p_amount_minor <= 0 OR NOT coalesce(wallet_rule_direct(p_type), false) THEN
        RAISE EXCEPTION 'invalid posting: type %, amount %', p_type, p_amount_minor
            USING ERRCODE = 'check_violation';
    END IF;
    IF (p_expires_at IS NOT NULL OR p_expires_in_seconds IS NOT NULL)
       AND (wallet_rule_lot_origin(p_type) IS DISTINCT FROM 'granted' OR p_expires_in_seconds <= 0
            OR (p_expires_at IS NOT NULL AND p_expires_in_seconds IS NOT NULL)) THEN
        RAISE EXCEPTION 'invalid posting: only a bonus expires, by expires_at or expires_in_seconds'
            USING ERRCODE = 'check_violation';
    END IF;
    v_delta_minor := wallet_rule_user_sign(p_type) * p_amount_minor;
    p_metadata := coalesce(p_metadata, '{}'::jsonb);
    -- The fingerprint is computed here, from the parsed values, so that every caller (HTTP,
    -- `wallet seed`, seed.sql) agrees on what "the same request" is.
    v_fingerprint := wallet_posting_fingerprint(p_type, p_user_id, p_asset_code, p_amount_minor,
                                                p_description, p_metadata, p_expires_at, p_expires_in_seconds);

    -- The key first: a retry is answered from what was stored, whatever has changed since in
    -- the reference data (an asset deactivated, a user's id mistyped in the retry).
    SELECT l.outcome, l.body, l.replayed INTO outcome, body, replayed
        FROM wallet_idempotency_lookup(p_api_key_id, p_idempotency_key, v_fingerprint) AS l;
    IF outcome IS NOT NULL THEN
        RETURN;
    END IF;

    SELECT u.id, s.id INTO v_user_account_id, v_system_account_id
        FROM accounts u
        JOIN asset_types t ON t.code = u.asset_code AND t.is_active
        JOIN accounts s ON s.system_code = v_system_code AND s.asset_code = u.asset_code
        WHERE u.user_id = p_user_id AND u.asset_code = p_asset_code;
    IF NOT FOUND THEN
        SELECT m.outcome, m.body INTO outcome, body FROM wallet_missing_account(p_user_id, p_asset_code, 'user_id', 'asset_type') m;
        RETURN;
    END IF;
    -- A bonus's own expires_at, judged now (after the key: a retry is answered from what was
    -- stored). Not stored when refused: the caller corrects it and retries with the same key.
    -- expires_in_seconds counts from the moment the credit is written (under the row lock).
    IF p_expires_at <= clock_timestamp() + interval '1 second' THEN
        outcome := 'validation_error';
        body := wallet_error_body(outcome, 'expires_at must be at least one second in the future', 'expires_at');
        RETURN;
    END IF;

    -- A credit to an account with a lot past its expiry expires it first (under the row lock),
    -- so the answer's balance_after is what a balance read at that instant says (a read leaves
    -- due credits out, and those a hold reserved as far as this credit replaces them). A debit
    -- does it below when it finds one.
    IF v_delta_minor > 0 THEN
        PERFORM wallet_expire_lots_for(a.id, 0, v_delta_minor) FROM accounts a
         WHERE a.id = v_user_account_id AND a.lots_expire_at <= clock_timestamp();
    END IF;

    -- One statement: the balance update (the row lock), the transaction and both entries. The
    -- cached held_minor may still count holds that have expired; if that alone makes a debit
    -- short, they are released (under the row lock) and the statement runs once more.
    FOR v_attempt IN 1..2 LOOP
        WITH account AS (
            UPDATE accounts SET balance_minor = balance_minor + v_delta_minor
            WHERE id = v_user_account_id
              AND (v_delta_minor > 0
                   OR (balance_minor - held_minor + v_delta_minor >= 0
                       AND NOT coalesce(lots_expire_at <= clock_timestamp(), false)))
            RETURNING balance_minor
        ), posted AS (
            INSERT INTO transactions (type, api_key_id, idempotency_key, user_id, asset_code, amount_minor,
                                      balance_after_minor, description, metadata, request_id, credit_expires_at)
            SELECT p_type, p_api_key_id, p_idempotency_key, p_user_id, p_asset_code, p_amount_minor,
                   account.balance_minor, p_description, p_metadata, p_request_id,
                   coalesce(p_expires_at, clock_timestamp() + make_interval(secs => p_expires_in_seconds))
            FROM account
            RETURNING id, balance_after_minor, created_at
        ), entries AS (
            INSERT INTO ledger_entries (transaction_id, entry_no, account_id, asset_code, amount_minor)
            SELECT posted.id, side.entry_no, side.account_id, p_asset_code, side.amount_minor
            FROM posted CROSS JOIN (VALUES (1::smallint, v_user_account_id, v_delta_minor),
                                           (2::smallint, v_system_account_id, -v_delta_minor))
                                   AS side(entry_no, account_id, amount_minor)
        )
        SELECT posted.id, posted.balance_after_minor, posted.created_at
            INTO v_transaction_id, v_balance_after_minor, v_created_at FROM posted;
        EXIT WHEN v_transaction_id IS NOT NULL OR v_delta_minor > 0
               OR wallet_release_expired(v_user_account_id) = 0;
    END LOOP;

    IF v_transaction_id IS NULL THEN
        outcome := 'insufficient_funds';
        body := wallet_error_body('insufficient_funds',
            format('available balance of %s %s is less than %s', p_user_id, p_asset_code, p_amount_minor),
            'amount');
    ELSE
        outcome := 'posted';
        body := wallet_transaction_document(
            v_transaction_id, p_type, 'posted', p_user_id, p_asset_code, p_amount_minor,
            v_balance_after_minor, p_description, p_metadata, p_idempotency_key, v_created_at,
            jsonb_build_array(
                wallet_entry_document(v_user_account_id, p_user_id, 'user', v_delta_minor),
                wallet_entry_document(v_system_account_id, v_system_code, 'system', -v_delta_minor)))
            || wallet_transaction_extras(NULL, 0, NULL, NULL, 0, NULL)
            || jsonb_build_object('lots', wallet_transaction_lots(v_transaction_id));
    END IF;
    INSERT INTO idempotency_keys (api_key_id, key, request_sha256, outcome, response_body)
        VALUES (p_api_key_id, p_idempotency_key, v_fingerprint, outcome, body);
END $$;
