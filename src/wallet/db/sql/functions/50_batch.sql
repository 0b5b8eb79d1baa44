-- Re-installed by every `wallet migrate` (after the versioned migrations); see wallet.db.migrate.
-- Batches: several operations posted atomically, all of them or none.

-- Replaced by wallet_batch_items (transfers added columns).
DROP FUNCTION IF EXISTS wallet_batch_operations(jsonb);

-- The operations of a batch as rows, numbered from 0 in the caller's order. delta is the signed
-- change to the account of user_id (for a transfer, user_id is the sender: -(amount + fee));
-- a transfer also credits to_user_id with amount.
-- Its columns changed with credit lots (a bonus's expires_at / expires_in_seconds).
DROP FUNCTION IF EXISTS wallet_batch_items(jsonb);
CREATE FUNCTION wallet_batch_items(p_operations jsonb)
RETURNS TABLE (ord integer, type text, user_id text, to_user_id text, asset_type text, amount bigint,
               fee bigint, description text, metadata jsonb, delta bigint, expires_at timestamptz,
               expires_in_seconds integer)
LANGUAGE sql IMMUTABLE AS $$
    SELECT (e.n - 1)::integer, e.op ->> 'type', e.op ->> 'user_id', e.op ->> 'to_user_id', e.op ->> 'asset_type',
           (e.op ->> 'amount')::bigint, coalesce((e.op ->> 'fee')::bigint, 0), e.op ->> 'description',
           coalesce(e.op -> 'metadata', '{}'::jsonb),
           wallet_rule_user_sign(e.op ->> 'type') * (e.op ->> 'amount')::bigint - coalesce((e.op ->> 'fee')::bigint, 0),
           (e.op ->> 'expires_at')::timestamptz, (e.op ->> 'expires_in_seconds')::integer
    FROM jsonb_array_elements(p_operations) WITH ORDINALITY AS e(op, n)
$$;

-- Posts up to WALLET_MAX_BATCH_OPERATIONS operations atomically: all of them or none.
-- p_operations is a JSON array of {type, user_id, asset_type, amount, description, metadata}, and
-- for a transfer also {to_user_id, fee}: a trade is two transfers in one batch.
-- Lock order: the idempotency lock, then every user account involved (senders, receivers and
-- the users of other operations), in ascending account id, in one statement. Two batches touching
-- the same users in opposite orders therefore lock them in the same order and cannot deadlock.
-- Each operation is one posting of the core (wallet_post, all or none), which computes the
-- balances in memory under those locks and writes all transactions, all entries and all balance
-- updates by one statement each.
CREATE OR REPLACE FUNCTION wallet_post_batch(
    p_api_key_id bigint, p_idempotency_key text, p_operations jsonb, p_request_id text DEFAULT NULL,
    OUT outcome text, OUT body jsonb, OUT replayed boolean)
LANGUAGE plpgsql AS $$
DECLARE
    v_fingerprint bytea := sha256(convert_to(p_operations::text, 'UTF8'));
    v_missing record;
    v_postings wallet_posting[];    -- per operation, in the caller's order
    v_documents jsonb[];            -- per operation: its transaction as posted
    v_first_short integer;          -- the first operation that would overdraw (from 1), if any
BEGIN
    replayed := false;
    IF jsonb_typeof(p_operations) <> 'array' OR jsonb_array_length(p_operations) < 1
       OR EXISTS (SELECT 1 FROM wallet_batch_items(p_operations) AS o
                  WHERE o.amount IS NULL OR o.amount <= 0 OR o.fee < 0
                     OR NOT (coalesce(wallet_rule_direct(o.type), false) OR o.type = 'transfer')
                     OR (o.type = 'transfer') <> (o.to_user_id IS NOT NULL)
                     OR (o.type <> 'transfer' AND o.fee <> 0)
                     OR o.to_user_id = o.user_id
                     OR ((o.expires_at IS NOT NULL OR o.expires_in_seconds IS NOT NULL)
                         AND (wallet_rule_lot_origin(o.type) IS DISTINCT FROM 'granted'
                              OR (o.expires_at IS NOT NULL AND o.expires_in_seconds IS NOT NULL)))) THEN
        RAISE EXCEPTION 'a batch needs one or more operations, each with a known type, a positive amount, and for a transfer another user to receive it'
            USING ERRCODE = 'check_violation';
    END IF;

    -- The key first: a retry is answered from what was stored, whatever has changed since in
    -- the reference data (an asset deactivated, a user's id mistyped in the retry).
    SELECT l.outcome, l.body, l.replayed INTO outcome, body, replayed
        FROM wallet_idempotency_lookup(p_api_key_id, p_idempotency_key, v_fingerprint) AS l;
    IF outcome IS NOT NULL THEN
        RETURN;
    END IF;

    -- A bonus's own expires_at, judged now (after the key, so a retry gets what was stored); not
    -- stored when refused: the caller corrects it and retries with the same key.
    SELECT o.ord INTO v_first_short FROM wallet_batch_items(p_operations) AS o
     WHERE o.expires_at <= clock_timestamp() + interval '1 second'
     ORDER BY o.ord LIMIT 1;
    IF FOUND THEN
        outcome := 'validation_error';
        body := wallet_error_body(outcome, 'expires_at must be at least one second in the future',
                                  format('operations[%s].expires_at', v_first_short));
        RETURN;
    END IF;

    SELECT m.ord, m.user_id, m.asset_type, m.field INTO v_missing
        FROM (SELECT o.ord, o.user_id, o.asset_type, 'user_id' AS field FROM wallet_batch_items(p_operations) AS o
              UNION ALL
              SELECT o.ord, o.to_user_id, o.asset_type, 'to_user_id' FROM wallet_batch_items(p_operations) AS o
              WHERE o.to_user_id IS NOT NULL) AS m
        LEFT JOIN users u ON u.id = m.user_id
        LEFT JOIN accounts a ON a.user_id = m.user_id AND a.asset_code = m.asset_type
        LEFT JOIN asset_types t ON t.code = m.asset_type AND t.is_active
        WHERE a.id IS NULL OR t.code IS NULL
        ORDER BY m.ord, m.field DESC LIMIT 1;
    IF FOUND THEN
        SELECT m.outcome, m.body INTO outcome, body
          FROM wallet_missing_account(v_missing.user_id, v_missing.asset_type,
                                      format('operations[%s].%s', v_missing.ord, v_missing.field),
                                      format('operations[%s].asset_type', v_missing.ord)) m;
        RETURN;
    END IF;

    -- One posting per operation, through the core, all of them or none: every account locked in
    -- ascending id, due lots expired (an account's holds resting on the batch's credits to it),
    -- the running balance of each account in the caller's order. Each account is found by one
    -- index probe per operation (LATERAL ... LIMIT 1: a join planned generically may scan them all).
    SELECT array_agg(ROW(NULL, o.type, p_api_key_id, p_idempotency_key, p_request_id, o.user_id, o.asset_type,
                         o.amount, o.description, o.metadata, NULL, o.to_user_id, o.fee, NULL, false, o.expires_at,
                         o.expires_in_seconds,
                         CASE WHEN o.to_user_id IS NULL THEN ARRAY[u.id, s.id]
                              WHEN o.fee > 0 THEN ARRAY[u.id, r.id, s.id] ELSE ARRAY[u.id, r.id] END,
                         CASE WHEN o.to_user_id IS NULL THEN ARRAY[o.delta, -o.delta]
                              WHEN o.fee > 0 THEN ARRAY[o.delta, o.amount, o.fee] ELSE ARRAY[o.delta, o.amount] END,
                         0, 'available')::wallet_posting ORDER BY o.ord)
      INTO v_postings
      FROM wallet_batch_items(p_operations) AS o
     CROSS JOIN LATERAL (SELECT x.id FROM accounts x WHERE x.user_id = o.user_id AND x.asset_code = o.asset_type
                          LIMIT 1) AS u
      LEFT JOIN LATERAL (SELECT x.id FROM accounts x WHERE x.user_id = o.to_user_id AND x.asset_code = o.asset_type
                          LIMIT 1) AS r ON true
     CROSS JOIN LATERAL (SELECT x.id FROM accounts x WHERE x.system_code = wallet_rule_system_account(o.type)
                            AND x.asset_code = o.asset_type LIMIT 1) AS s;
    SELECT array_agg(p.document ORDER BY p.ord), min(p.ord) FILTER (WHERE p.short_account_id IS NOT NULL)
      INTO v_documents, v_first_short
      FROM wallet_post(v_postings, true) AS p;
    IF v_first_short IS NOT NULL THEN
        outcome := 'insufficient_funds';
        body := wallet_insufficient_funds_body(NULL, NULL,
            (v_postings[v_first_short]).amount_minor + (v_postings[v_first_short]).fee_minor,
            p_operation => v_first_short - 1);
    ELSE
        outcome := 'posted';
        body := jsonb_build_object('transactions', to_jsonb(v_documents));
    END IF;
    PERFORM wallet_idempotency_store_one(p_api_key_id, p_idempotency_key, v_fingerprint, outcome, body);
END $$;
