-- Re-installed by every `wallet migrate` (after the versioned migrations); see wallet.db.migrate.
-- Idempotency: one advisory lock per (caller, key) and the stored outcome.

-- What "the same request" is for a single top-up, bonus or spend: posted alone
-- (wallet_post_transaction) or in a group (wallet_post_group), a retry must find the same value.
-- A bonus's expiry counts only when given, so requests without one keep the fingerprint they had
-- before expiries existed.
CREATE OR REPLACE FUNCTION wallet_posting_fingerprint(
    p_type text, p_user_id text, p_asset_code text, p_amount_minor bigint, p_description text,
    p_metadata jsonb, p_expires_at timestamptz DEFAULT NULL, p_expires_in_seconds integer DEFAULT NULL) RETURNS bytea
LANGUAGE sql STABLE AS $$
    SELECT sha256(convert_to((jsonb_build_object(
        'type', p_type, 'user_id', p_user_id, 'asset_type', p_asset_code, 'amount', p_amount_minor,
        'description', p_description, 'metadata', coalesce(p_metadata, '{}'::jsonb))
        || jsonb_strip_nulls(jsonb_build_object(
               'expires_at', to_char(p_expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
               'expires_in_seconds', p_expires_in_seconds)))::text, 'UTF8'))
$$;

-- Serialises requests that share (caller, key) and answers a repeat from the stored outcome.
-- Returns NULLs when the key is new: the caller then does the work and inserts its outcome into
-- idempotency_keys in the same database transaction. Otherwise returns the answer to give:
-- the stored outcome (a replay), `idempotency_key_reused` if the stored request differs, or
-- `idempotency_key_in_use` if another request holding the key outlasts lock_timeout.
-- The lock is a transaction-scoped advisory lock: it lives in memory, not in a table, so claiming
-- it writes nothing; a second request with the key waits on it until the first commits, then
-- finds its stored outcome. (The primary key on idempotency_keys remains the final guard.)
CREATE OR REPLACE FUNCTION wallet_idempotency_lookup(
    p_api_key_id bigint, p_idempotency_key text, p_fingerprint bytea,
    OUT outcome text, OUT body jsonb, OUT replayed boolean)
LANGUAGE plpgsql AS $$
DECLARE
    v_stored record;
BEGIN
    replayed := false;
    BEGIN
        PERFORM pg_advisory_xact_lock(hashtextextended(p_idempotency_key, p_api_key_id));
    EXCEPTION WHEN lock_not_available THEN
        outcome := 'idempotency_key_in_use';
        body := wallet_error_body('idempotency_key_in_use',
            'another request with this idempotency key is still being processed; retry later',
            'idempotency_key');
        RETURN;
    END;
    SELECT k.request_sha256, k.outcome, k.response_body INTO v_stored
        FROM idempotency_keys k WHERE k.api_key_id = p_api_key_id AND k.key = p_idempotency_key;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF v_stored.request_sha256 <> p_fingerprint THEN
        outcome := 'idempotency_key_reused';
        body := wallet_error_body('idempotency_key_reused',
            'this idempotency key was already used with a different request', 'idempotency_key');
        RETURN;
    END IF;
    outcome := v_stored.outcome;
    body := v_stored.response_body;
    replayed := true;
END $$;
