-- Re-installed by every `wallet migrate` (after the versioned migrations); see wallet.db.migrate.
-- Holds: place (authorize), capture (spend part or all, at most once), void, expire.
--
-- Lock order, as for every write: the idempotency key, then user account rows (ascending id),
-- then the hold rows of those accounts. A capture or void locks the hold's account before the
-- hold itself, so it queues behind spends of that user and never the other way round.

-- A hold as its public JSON. An open hold whose time has passed is shown as 'expired' from that
-- instant, whether or not the database has released it yet.
CREATE OR REPLACE FUNCTION wallet_hold_document(h holds) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'id', h.id,
        'user_id', h.user_id,
        'asset_type', h.asset_code,
        'amount', h.amount_minor,
        'status', CASE WHEN h.status = 'open' AND h.expires_at <= clock_timestamp() THEN 'expired'
                       ELSE h.status END,
        'captured_amount', h.captured_amount_minor,
        'capture_transaction_id', h.capture_transaction_id,
        'description', h.description,
        'metadata', h.metadata,
        'idempotency_key', h.idempotency_key,
        'created_at', to_char(h.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
        'expires_at', to_char(h.expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
        'closed_at', to_char(h.closed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))
$$;

-- Marks the account's open holds that have expired as 'expired' and takes them out of its
-- cached held_minor, under the account's row lock. Returns the amount released.
CREATE OR REPLACE FUNCTION wallet_release_expired_holds(p_account_id bigint) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_released bigint;
BEGIN
    PERFORM 1 FROM accounts WHERE id = p_account_id FOR UPDATE;
    WITH released AS (
        UPDATE holds SET status = 'expired', closed_at = greatest(expires_at, created_at + interval '1 microsecond')
        WHERE account_id = p_account_id AND status = 'open' AND expires_at <= clock_timestamp()
        RETURNING amount_minor
    )
    SELECT coalesce(sum(amount_minor), 0) INTO v_released FROM released;
    IF v_released > 0 THEN
        UPDATE accounts SET held_minor = held_minor - v_released WHERE id = p_account_id;
    END IF;
    RETURN v_released;
END $$;

-- Releases expired holds of at most p_max_accounts accounts, skipping accounts another
-- transaction holds (they are released by that writer or the next sweep). Returns the number
-- of accounts swept. Run periodically by `wallet serve` and by `wallet holds release-expired`.
CREATE OR REPLACE FUNCTION wallet_sweep_expired_holds(p_max_accounts integer) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_account_id bigint;
    v_swept integer := 0;
BEGIN
    FOR v_account_id IN
        SELECT a.id FROM accounts a
         WHERE a.id IN (SELECT DISTINCT h.account_id FROM holds h
                         WHERE h.status = 'open' AND h.expires_at <= clock_timestamp()
                         LIMIT p_max_accounts)
         ORDER BY a.id
         FOR UPDATE SKIP LOCKED
    LOOP
        PERFORM wallet_release_expired_holds(v_account_id);
        v_swept := v_swept + 1;
    END LOOP;
    RETURN v_swept;
END $$;

-- Reserves p_amount_minor of the user's available balance until p_expires_at.
CREATE OR REPLACE FUNCTION wallet_place_hold(
    p_api_key_id bigint, p_idempotency_key text, p_user_id text, p_asset_code text,
    p_amount_minor bigint, p_expires_in_seconds integer, p_description text, p_metadata jsonb,
    OUT outcome text, OUT body jsonb, OUT replayed boolean)
LANGUAGE plpgsql AS $$
DECLARE
    v_fingerprint bytea;
    v_account_id bigint;
    v_placed boolean := false;
    v_hold holds;
BEGIN
    replayed := false;
    IF p_amount_minor IS NULL OR p_amount_minor <= 0 OR p_expires_in_seconds IS NULL OR p_expires_in_seconds <= 0 THEN
        RAISE EXCEPTION 'invalid hold: amount %, expires in % s', p_amount_minor, p_expires_in_seconds
            USING ERRCODE = 'check_violation';
    END IF;
    p_metadata := coalesce(p_metadata, '{}'::jsonb);
    v_fingerprint := sha256(convert_to(jsonb_build_object(
        'operation', 'hold', 'user_id', p_user_id, 'asset_type', p_asset_code, 'amount', p_amount_minor,
        'expires_in_seconds', p_expires_in_seconds, 'description', p_description,
        'metadata', p_metadata)::text, 'UTF8'));

    -- The key first: a retry is answered from what was stored, whatever has changed since in
    -- the reference data (an asset deactivated, a user's id mistyped in the retry).
    SELECT l.outcome, l.body, l.replayed INTO outcome, body, replayed
        FROM wallet_idempotency_lookup(p_api_key_id, p_idempotency_key, v_fingerprint) AS l;
    IF outcome IS NOT NULL THEN
        RETURN;
    END IF;

    SELECT u.id INTO v_account_id
        FROM accounts u JOIN asset_types t ON t.code = u.asset_code AND t.is_active
        WHERE u.user_id = p_user_id AND u.asset_code = p_asset_code;
    IF NOT FOUND THEN
        SELECT m.outcome, m.body INTO outcome, body FROM wallet_missing_account(p_user_id, p_asset_code, 'user_id', 'asset_type') m;
        RETURN;
    END IF;

    FOR v_attempt IN 1..2 LOOP
        UPDATE accounts SET held_minor = held_minor + p_amount_minor
            WHERE id = v_account_id AND balance_minor - held_minor - p_amount_minor >= 0
              AND NOT coalesce(lots_expire_at <= clock_timestamp(), false);
        v_placed := FOUND;
        EXIT WHEN v_placed OR wallet_release_expired(v_account_id) = 0;
    END LOOP;

    IF NOT v_placed THEN
        outcome := 'insufficient_funds';
        body := wallet_insufficient_funds_body(p_user_id, p_asset_code, p_amount_minor);
    ELSE
        INSERT INTO holds (api_key_id, idempotency_key, user_id, asset_code, account_id, amount_minor,
                           description, metadata, expires_at)
            VALUES (p_api_key_id, p_idempotency_key, p_user_id, p_asset_code, v_account_id, p_amount_minor,
                    p_description, p_metadata, clock_timestamp() + make_interval(secs => p_expires_in_seconds))
            RETURNING * INTO v_hold;
        outcome := 'posted';
        body := wallet_hold_document(v_hold);
    END IF;
    PERFORM wallet_idempotency_store_one(p_api_key_id, p_idempotency_key, v_fingerprint, outcome, body);
END $$;

-- Why an open-or-not hold cannot be captured or voided now, as (outcome, body); NULLs if it can.
-- An open hold past its expiry is released here, so the refusal and the release commit together.
CREATE OR REPLACE FUNCTION wallet_hold_refusal(p_hold holds, OUT outcome text, OUT body jsonb)
LANGUAGE plpgsql AS $$
BEGIN
    IF p_hold.status = 'captured' THEN
        outcome := 'hold_already_captured';
        body := wallet_error_body(outcome, format('hold %s was captured already', p_hold.id), NULL);
    ELSIF p_hold.status = 'voided' THEN
        outcome := 'hold_already_voided';
        body := wallet_error_body(outcome, format('hold %s was voided', p_hold.id), NULL);
    ELSIF p_hold.status = 'expired' OR p_hold.expires_at <= clock_timestamp() THEN
        PERFORM wallet_release_expired_holds(p_hold.account_id);
        outcome := 'hold_expired';
        body := wallet_error_body(outcome, format('hold %s expired at %s', p_hold.id,
            to_char(p_hold.expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')), NULL);
    END IF;
END $$;

-- Takes the hold's account row lock, then the hold's (the lock order of every write), and says
-- whether it can still be captured or voided: (hold, NULL, NULL) if it can, (hold, outcome, body)
-- if not, and (NULL, 'hold_not_found', body) when there is no such hold.
CREATE OR REPLACE FUNCTION wallet_lock_hold(p_hold_id uuid, OUT hold holds, OUT outcome text, OUT body jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    v_account_id bigint;
    v_refusal record;
BEGIN
    SELECT h.account_id INTO v_account_id FROM holds h WHERE h.id = p_hold_id;
    IF NOT FOUND THEN
        outcome := 'hold_not_found';
        body := wallet_error_body(outcome, format('no hold with id %s', p_hold_id), 'id');
        RETURN;
    END IF;
    PERFORM 1 FROM accounts WHERE id = v_account_id FOR UPDATE;
    SELECT * INTO hold FROM holds WHERE id = p_hold_id FOR UPDATE;
    v_refusal := wallet_hold_refusal(hold);
    outcome := v_refusal.outcome;
    body := v_refusal.body;
END $$;

-- Captures p_amount_minor (all of it when NULL) of an open hold as a 'capture' transaction into
-- SYSTEM_REVENUE; the rest of the hold is released. At most once per hold.
CREATE OR REPLACE FUNCTION wallet_capture_hold(
    p_api_key_id bigint, p_idempotency_key text, p_hold_id uuid, p_amount_minor bigint,
    p_description text, p_metadata jsonb, p_request_id text DEFAULT NULL,
    OUT outcome text, OUT body jsonb, OUT replayed boolean)
LANGUAGE plpgsql AS $$
DECLARE
    v_fingerprint bytea;
    v_hold holds;
    v_locked record;
    v_amount_minor bigint;
    v_posting wallet_posting;
    v_posted record;
    v_transaction_id uuid;
BEGIN
    replayed := false;
    p_metadata := coalesce(p_metadata, '{}'::jsonb);
    v_fingerprint := sha256(convert_to(jsonb_build_object(
        'operation', 'capture', 'hold_id', p_hold_id, 'amount', p_amount_minor,
        'description', p_description, 'metadata', p_metadata)::text, 'UTF8'));

    -- The key first: a retry is answered from what was stored, whatever has changed since in
    -- the reference data (an asset deactivated, a user's id mistyped in the retry).
    SELECT l.outcome, l.body, l.replayed INTO outcome, body, replayed
        FROM wallet_idempotency_lookup(p_api_key_id, p_idempotency_key, v_fingerprint) AS l;
    IF outcome IS NOT NULL THEN
        RETURN;
    END IF;

    v_locked := wallet_lock_hold(p_hold_id);
    v_hold := v_locked.hold;
    outcome := v_locked.outcome;
    body := v_locked.body;
    IF outcome = 'hold_not_found' THEN
        RETURN;  -- nothing happened: not stored, a retry may find it
    END IF;
    v_amount_minor := coalesce(p_amount_minor, v_hold.amount_minor);
    IF outcome IS NULL AND v_amount_minor > v_hold.amount_minor THEN
        outcome := 'amount_exceeds_hold';
        body := wallet_error_body(outcome,
            format('hold %s reserved %s; cannot capture %s', p_hold_id, v_hold.amount_minor, v_amount_minor),
            'amount');
    ELSIF outcome IS NULL THEN
        -- Lots past their expiry go to breakage first, except what this hold still reserves:
        -- the capture then draws those (expired lots first, see wallet_lots_draw).
        PERFORM wallet_expire_lots(v_hold.account_id);
        -- A partial capture (when it can go through) releases the rest of the hold first, and
        -- the expired credits only that rest reserved go to breakage now, less what the capture
        -- takes of them: the answer's balance_after is then what a balance read right after says.
        IF v_amount_minor < v_hold.amount_minor
           AND (SELECT a.balance_minor >= v_amount_minor FROM accounts a WHERE a.id = v_hold.account_id) THEN
            UPDATE accounts SET held_minor = held_minor - (v_hold.amount_minor - v_amount_minor)
             WHERE id = v_hold.account_id;
            v_hold.amount_minor := v_amount_minor;  -- what is left to release below
            PERFORM wallet_expire_lots_for(v_hold.account_id, v_amount_minor, 0);
        END IF;
        -- One posting of the core (wallet_post), its due lots expired above: the balance must
        -- cover it (capturing never makes balance - held worse: it takes at most what the hold
        -- held; short only for a user an admin clawback left in debt after the hold was placed).
        SELECT ARRAY[v_hold.account_id, s.id] INTO STRICT v_posting.account_ids FROM accounts s
            WHERE s.system_code = wallet_rule_system_account('capture') AND s.asset_code = v_hold.asset_code;
        v_posting.type := 'capture';
        v_posting.api_key_id := p_api_key_id;
        v_posting.idempotency_key := p_idempotency_key;
        v_posting.request_id := p_request_id;
        v_posting.user_id := v_hold.user_id;
        v_posting.asset_code := v_hold.asset_code;
        v_posting.amount_minor := v_amount_minor;
        v_posting.description := coalesce(p_description, v_hold.description);
        v_posting.metadata := p_metadata;
        v_posting.hold_id := p_hold_id;
        v_posting.amounts_minor := ARRAY[-v_amount_minor, v_amount_minor];
        v_posting.held_change_minor := -v_hold.amount_minor;
        v_posting.covered_by := 'balance';
        SELECT p.transaction_id, p.document INTO v_posted FROM wallet_post(ARRAY[v_posting], true, false) AS p;
        IF v_posted.transaction_id IS NULL THEN
            outcome := 'insufficient_funds';
            body := wallet_insufficient_funds_body(v_hold.user_id, v_hold.asset_code, v_amount_minor, 'balance');
        ELSE
            v_transaction_id := v_posted.transaction_id;
            UPDATE holds SET status = 'captured', captured_amount_minor = v_amount_minor,
                             capture_transaction_id = v_transaction_id,
                             closed_at = (SELECT t.created_at FROM transactions t WHERE t.id = v_transaction_id)
             WHERE id = p_hold_id;
            outcome := 'posted';
            body := v_posted.document;
        END IF;
    END IF;
    PERFORM wallet_idempotency_store_one(p_api_key_id, p_idempotency_key, v_fingerprint, outcome, body,
                                         v_transaction_id);
END $$;

-- Releases an open hold without spending anything.
CREATE OR REPLACE FUNCTION wallet_void_hold(
    p_api_key_id bigint, p_idempotency_key text, p_hold_id uuid,
    OUT outcome text, OUT body jsonb, OUT replayed boolean)
LANGUAGE plpgsql AS $$
DECLARE
    v_fingerprint bytea;
    v_hold holds;
    v_locked record;
BEGIN
    replayed := false;
    v_fingerprint := sha256(convert_to(jsonb_build_object('operation', 'void', 'hold_id', p_hold_id)::text, 'UTF8'));
    -- The key first: a retry is answered from what was stored, whatever has changed since in
    -- the reference data (an asset deactivated, a user's id mistyped in the retry).
    SELECT l.outcome, l.body, l.replayed INTO outcome, body, replayed
        FROM wallet_idempotency_lookup(p_api_key_id, p_idempotency_key, v_fingerprint) AS l;
    IF outcome IS NOT NULL THEN
        RETURN;
    END IF;

    v_locked := wallet_lock_hold(p_hold_id);
    v_hold := v_locked.hold;
    outcome := v_locked.outcome;
    body := v_locked.body;
    IF outcome = 'hold_not_found' THEN
        RETURN;  -- nothing happened: not stored, a retry may find it
    END IF;
    IF outcome IS NULL THEN
        UPDATE accounts SET held_minor = held_minor - v_hold.amount_minor WHERE id = v_hold.account_id;
        UPDATE holds SET status = 'voided', closed_at = clock_timestamp() WHERE id = p_hold_id
            RETURNING * INTO v_hold;
        outcome := 'applied';
        body := wallet_hold_document(v_hold);
    END IF;
    PERFORM wallet_idempotency_store_one(p_api_key_id, p_idempotency_key, v_fingerprint, outcome, body);
END $$;
