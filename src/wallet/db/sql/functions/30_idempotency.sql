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

-- The stored answers of (caller, key) pairs, for the n-th of parallel arrays: the stored outcome
-- (a replay), or `idempotency_key_reused` if the stored request's fingerprint differs. Pairs
-- with nothing stored are left out. A record of a posted transaction keeps its id and renders
-- its document again, as the write answered it (wallet_transactions_document, as posted, with
-- the lots kept as answered if any: see wallet_idempotency_store); a posted batch's record keeps
-- its transactions' ids and renders its answer, `{"transactions": [...]}`, the same way
-- (migration 0016); records of refusals and holds, batches whose lots name an expiry, and all
-- written before, keep their body verbatim.
-- The one reader of idempotency_keys: single writes (wallet_idempotency_lookup) and group
-- commit (wallet_post_group) alike.
CREATE OR REPLACE FUNCTION wallet_idempotency_stored(p_api_key_ids bigint[], p_keys text[], p_fingerprints bytea[])
RETURNS TABLE (n integer, outcome text, body jsonb, replayed boolean)
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN QUERY
        SELECT w.n::integer,
               CASE WHEN k.request_sha256 <> w.fingerprint THEN 'idempotency_key_reused' ELSE k.outcome END,
               CASE WHEN k.request_sha256 <> w.fingerprint THEN
                        wallet_error_body('idempotency_key_reused',
                            'this idempotency key was already used with a different request', 'idempotency_key')
                    WHEN k.transaction_ids IS NOT NULL THEN
                        jsonb_build_object('transactions', wallet_transactions_document(k.transaction_ids, true))
                    WHEN k.transaction_id IS NULL THEN k.response_body
                    ELSE (wallet_transactions_document(ARRAY[k.transaction_id], true) -> 0)
                         || coalesce(k.response_body, '{}'::jsonb) END,
               k.request_sha256 = w.fingerprint
          FROM unnest(p_api_key_ids, p_keys, p_fingerprints) WITH ORDINALITY AS w(api_key_id, key, fingerprint, n)
          JOIN idempotency_keys k ON k.api_key_id = w.api_key_id AND k.key = w.key;
END $$;

-- Stores the outcomes of requests (parallel arrays): the one writer of idempotency_keys. A
-- posted transaction's record keeps its id (p_transaction_ids), no body (a replay renders it) and
-- no time (its transaction's, migration 0013). A posted batch (its body `{"transactions": [...]}`,
-- no single id) keeps its transactions' ids in their order and its time, no body (migration 0016).
-- Only the lots it moved are kept as answered when they name an expiry: a lot's expiry is fixed
-- (credit_lots_identity_fixed), but the answer must not depend on it, even where tests make time
-- pass by moving one.
CREATE OR REPLACE FUNCTION wallet_idempotency_store(
    p_api_key_ids bigint[], p_keys text[], p_fingerprints bytea[], p_outcomes text[], p_bodies jsonb[],
    p_transaction_ids uuid[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO idempotency_keys (api_key_id, key, request_sha256, outcome, response_body, transaction_id,
                                  transaction_ids, created_at)
    SELECT w.api_key_id, w.key, w.fingerprint, w.outcome,
           CASE WHEN b.ids IS NOT NULL THEN NULL
                WHEN w.transaction_id IS NULL THEN w.body
                WHEN jsonb_path_exists(w.body, '$.lots[*] ? (@.expires_at != null)')
                THEN jsonb_build_object('lots', w.body -> 'lots') END,
           w.transaction_id, b.ids, CASE WHEN w.transaction_id IS NULL THEN now() END
      FROM unnest(p_api_key_ids, p_keys, p_fingerprints, p_outcomes, p_bodies, p_transaction_ids)
           AS w(api_key_id, key, fingerprint, outcome, body, transaction_id)
     -- A posted batch's ids in its order, unless a lot it moved names an expiry (then its body is
     -- kept whole, as a single write keeps such lots).
     CROSS JOIN LATERAL (
           SELECT CASE WHEN w.outcome = 'posted' AND w.transaction_id IS NULL
                             AND jsonb_typeof(w.body -> 'transactions') = 'array'
                             AND NOT jsonb_path_exists(w.body, '$.transactions[*].lots[*] ? (@.expires_at != null)')
                       THEN ARRAY(SELECT (d.document ->> 'id')::uuid
                                    FROM jsonb_array_elements(w.body -> 'transactions') WITH ORDINALITY AS d(document, n)
                                   ORDER BY d.n) END AS ids) AS b;
END $$;

-- The same for one request.
CREATE OR REPLACE FUNCTION wallet_idempotency_store_one(
    p_api_key_id bigint, p_key text, p_fingerprint bytea, p_outcome text, p_body jsonb,
    p_transaction_id uuid DEFAULT NULL) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM wallet_idempotency_store(ARRAY[p_api_key_id], ARRAY[p_key], ARRAY[p_fingerprint], ARRAY[p_outcome],
                                     ARRAY[p_body], ARRAY[p_transaction_id]);
END $$;

-- The body of every `insufficient_funds`: what the user's account (p_covered_by: 'balance' or
-- 'available', see wallet_posting) cannot cover, or which operation of a batch (numbered from 0).
CREATE OR REPLACE FUNCTION wallet_insufficient_funds_body(
    p_user_id text, p_asset_code text, p_amount_minor bigint, p_covered_by text DEFAULT 'available',
    p_operation integer DEFAULT NULL, p_note text DEFAULT NULL) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT wallet_error_body('insufficient_funds',
        CASE WHEN p_operation IS NOT NULL
             THEN format('operation %s: available balance is less than %s', p_operation, p_amount_minor)
             ELSE format('%s of %s %s is less than %s',
                         CASE WHEN p_covered_by = 'balance' THEN 'balance' ELSE 'available balance' END,
                         p_user_id, p_asset_code, p_amount_minor) END
        || coalesce(' ' || p_note, ''),
        CASE WHEN p_operation IS NOT NULL THEN format('operations[%s].amount', p_operation) ELSE 'amount' END)
$$;

-- Serialises requests that share (caller, key) and answers a repeat from the stored outcome.
-- Returns NULLs when the key is new: the caller then does the work and stores its outcome
-- (wallet_idempotency_store) in the same database transaction. Otherwise returns the answer to
-- give: the stored outcome (a replay), `idempotency_key_reused` if the stored request differs, or
-- `idempotency_key_in_use` if another request holding the key outlasts lock_timeout.
-- The lock is a transaction-scoped advisory lock: it lives in memory, not in a table, so claiming
-- it writes nothing; a second request with the key waits on it until the first commits, then
-- finds its stored outcome. (The primary key on idempotency_keys remains the final guard.)
CREATE OR REPLACE FUNCTION wallet_idempotency_lookup(
    p_api_key_id bigint, p_idempotency_key text, p_fingerprint bytea,
    OUT outcome text, OUT body jsonb, OUT replayed boolean)
LANGUAGE plpgsql AS $$
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
    -- A new key (the usual case) is told by one probe of the primary key; a stored one is read
    -- by the one reader.
    IF EXISTS (SELECT 1 FROM idempotency_keys k WHERE k.api_key_id = p_api_key_id AND k.key = p_idempotency_key) THEN
        SELECT s.outcome, s.body, s.replayed INTO outcome, body, replayed
          FROM wallet_idempotency_stored(ARRAY[p_api_key_id], ARRAY[p_idempotency_key], ARRAY[p_fingerprint]) AS s;
    END IF;
    replayed := coalesce(replayed, false);
END $$;
