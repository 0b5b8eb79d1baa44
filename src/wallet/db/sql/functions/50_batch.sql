-- Re-installed by every `wallet migrate` (after the versioned migrations); see wallet.db.migrate.
-- Posting.

-- The operations of a batch as rows, numbered from 0 in the caller's order; delta is the signed
-- change to the user's account.
CREATE OR REPLACE FUNCTION wallet_batch_operations(p_operations jsonb)
RETURNS TABLE (ord integer, type text, user_id text, asset_type text, amount bigint,
               description text, metadata jsonb, delta bigint)
LANGUAGE sql IMMUTABLE AS $$
    SELECT (e.n - 1)::integer, e.op ->> 'type', e.op ->> 'user_id', e.op ->> 'asset_type',
           (e.op ->> 'amount')::bigint, e.op ->> 'description', coalesce(e.op -> 'metadata', '{}'::jsonb),
           wallet_rule_user_sign(e.op ->> 'type') * (e.op ->> 'amount')::bigint
    FROM jsonb_array_elements(p_operations) WITH ORDINALITY AS e(op, n)
$$;

-- Posts up to WALLET_MAX_BATCH_OPERATIONS operations atomically: all of them or none.
-- p_operations is a JSON array of {type, user_id, asset_type, amount, description, metadata}.
-- Lock order: the idempotency lock, then every user account involved, in ascending account id,
-- in one statement. Two batches touching the same users in opposite orders therefore lock them
-- in the same order and cannot deadlock. Balances are computed in memory under those locks, and
-- all transactions, all entries and all balance updates are written by one statement each.
CREATE OR REPLACE FUNCTION wallet_post_batch(
    p_api_key_id bigint, p_idempotency_key text, p_operations jsonb,
    OUT outcome text, OUT body jsonb, OUT replayed boolean)
LANGUAGE plpgsql AS $$
DECLARE
    v_fingerprint bytea := sha256(convert_to(p_operations::text, 'UTF8'));
    v_missing record;
    v_outcome record;
    v_ids uuid[];                   -- per operation: the new transaction's id
    v_user_account_ids bigint[];    -- per operation: the user's account
    v_system_account_ids bigint[];  -- per operation: the system account on the other side
    v_system_codes text[];
    v_balances_after bigint[];      -- per operation: the user's balance right after it
    v_first_short integer;          -- the first operation that would overdraw, if any
BEGIN
    replayed := false;
    IF jsonb_typeof(p_operations) <> 'array' OR jsonb_array_length(p_operations) < 1
       OR EXISTS (SELECT 1 FROM wallet_batch_operations(p_operations) AS o
                  WHERE o.amount IS NULL OR o.amount <= 0 OR NOT coalesce(wallet_rule_direct(o.type), false)) THEN
        RAISE EXCEPTION 'a batch needs one or more operations, each with a known type and a positive amount'
            USING ERRCODE = 'check_violation';
    END IF;

    SELECT o.ord, o.user_id, o.asset_type, (u.id IS NOT NULL) AS user_exists INTO v_missing
        FROM wallet_batch_operations(p_operations) AS o
        LEFT JOIN users u ON u.id = o.user_id
        LEFT JOIN accounts a ON a.user_id = o.user_id AND a.asset_code = o.asset_type
        LEFT JOIN asset_types t ON t.code = o.asset_type AND t.is_active
        WHERE a.id IS NULL OR t.code IS NULL
        ORDER BY o.ord LIMIT 1;
    IF FOUND THEN
        IF NOT v_missing.user_exists THEN
            outcome := 'user_not_found';
            body := wallet_error_body('user_not_found', format('no user with id %s', v_missing.user_id),
                format('operations[%s].user_id', v_missing.ord));
        ELSE
            outcome := 'asset_type_not_found';
            body := wallet_error_body('asset_type_not_found',
                format('no active asset type with code %s', v_missing.asset_type),
                format('operations[%s].asset_type', v_missing.ord));
        END IF;
        RETURN;
    END IF;

    v_outcome := wallet_idempotency_lookup(p_api_key_id, p_idempotency_key, v_fingerprint);
    IF v_outcome.outcome IS NOT NULL THEN
        outcome := v_outcome.outcome;
        body := v_outcome.body;
        replayed := v_outcome.replayed;
        RETURN;
    END IF;

    PERFORM 1 FROM accounts
        WHERE id IN (SELECT a.id FROM wallet_batch_operations(p_operations) AS o
                     JOIN accounts a ON a.user_id = o.user_id AND a.asset_code = o.asset_type)
        ORDER BY id FOR UPDATE;
    -- Expired holds still in the cached held_minor must not make the batch short.
    PERFORM wallet_release_expired_holds(a.id)
        FROM accounts a
        WHERE a.held_minor > 0
          AND a.id IN (SELECT u.id FROM wallet_batch_operations(p_operations) AS o
                       JOIN accounts u ON u.user_id = o.user_id AND u.asset_code = o.asset_type);

    -- Under the locks, in one pass: every operation's accounts, the user's balance right after it
    -- (a running sum per account, in the caller's order) and the first one that would overdraw.
    SELECT array_agg(gen_random_uuid() ORDER BY r.ord), array_agg(r.account_id ORDER BY r.ord),
           array_agg(r.system_account_id ORDER BY r.ord), array_agg(r.system_code ORDER BY r.ord),
           array_agg(r.balance_after ORDER BY r.ord), min(r.ord) FILTER (WHERE r.delta < 0 AND r.balance_after < r.held_minor)
      INTO v_ids, v_user_account_ids, v_system_account_ids, v_system_codes, v_balances_after, v_first_short
      FROM (SELECT o.ord, o.delta, a.id AS account_id, a.held_minor, s.id AS system_account_id, s.system_code,
                   a.balance_minor + sum(o.delta) OVER (PARTITION BY a.id ORDER BY o.ord) AS balance_after
              FROM wallet_batch_operations(p_operations) AS o
              JOIN accounts a ON a.user_id = o.user_id AND a.asset_code = o.asset_type
              JOIN accounts s ON s.system_code = wallet_rule_system_account(o.type) AND s.asset_code = o.asset_type
           ) AS r;
    IF v_first_short IS NOT NULL THEN
        outcome := 'insufficient_funds';
        body := wallet_error_body('insufficient_funds',
            format('operation %s: available balance is less than %s', v_first_short,
                   (p_operations -> v_first_short ->> 'amount')),
            format('operations[%s].amount', v_first_short));
        INSERT INTO idempotency_keys (api_key_id, key, request_sha256, outcome, response_body)
            VALUES (p_api_key_id, p_idempotency_key, v_fingerprint, outcome, body);
        RETURN;
    END IF;

    -- One statement writes every transaction, every entry and every balance, and returns the
    -- response built from the values in hand.
    WITH posted AS (
        INSERT INTO transactions (id, type, api_key_id, idempotency_key, user_id, asset_code, amount_minor,
                                  balance_after_minor, description, metadata)
        SELECT v_ids[o.ord + 1], o.type, p_api_key_id, p_idempotency_key, o.user_id, o.asset_type, o.amount,
               v_balances_after[o.ord + 1], o.description, o.metadata
        FROM wallet_batch_operations(p_operations) AS o ORDER BY o.ord
        RETURNING id, created_at
    ), entries AS (
        INSERT INTO ledger_entries (transaction_id, entry_no, account_id, asset_code, amount_minor)
        SELECT v_ids[o.ord + 1], side.entry_no, side.account_id, o.asset_type, side.amount_minor
        FROM wallet_batch_operations(p_operations) AS o
        CROSS JOIN LATERAL (VALUES (1::smallint, v_user_account_ids[o.ord + 1], o.delta),
                                   (2::smallint, v_system_account_ids[o.ord + 1], -o.delta))
                           AS side(entry_no, account_id, amount_minor)
    ), balances AS (
        UPDATE accounts a SET balance_minor = final.balance_after
        FROM (SELECT DISTINCT ON (u.account_id) u.account_id, u.balance_after
              FROM unnest(v_user_account_ids, v_balances_after) WITH ORDINALITY AS u(account_id, balance_after, n)
              ORDER BY u.account_id, u.n DESC) AS final
        WHERE a.id = final.account_id
    )
    SELECT jsonb_build_object('transactions', jsonb_agg(wallet_transaction_document(
               p.id, o.type, 'posted', o.user_id, o.asset_type, o.amount, v_balances_after[o.ord + 1],
               o.description, o.metadata, p_idempotency_key, p.created_at,
               jsonb_build_array(
                   wallet_entry_document(v_user_account_ids[o.ord + 1], o.user_id, 'user', o.delta),
                   wallet_entry_document(v_system_account_ids[o.ord + 1], v_system_codes[o.ord + 1], 'system', -o.delta))
           ) || wallet_transaction_extras(NULL, 0, NULL, NULL, 0, NULL) ORDER BY o.ord))
      INTO body
      FROM posted p JOIN wallet_batch_operations(p_operations) AS o ON p.id = v_ids[o.ord + 1];

    outcome := 'posted';
    INSERT INTO idempotency_keys (api_key_id, key, request_sha256, outcome, response_body)
        VALUES (p_api_key_id, p_idempotency_key, v_fingerprint, outcome, body);
END $$;
