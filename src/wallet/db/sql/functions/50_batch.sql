-- Re-installed by every `wallet migrate` (after the versioned migrations); see wallet.db.migrate.
-- Batches: several operations posted atomically, all of them or none.

-- Replaced by wallet_batch_items (transfers added columns).
DROP FUNCTION IF EXISTS wallet_batch_operations(jsonb);

-- The operations of a batch as rows, numbered from 0 in the caller's order. delta is the signed
-- change to the account of user_id (for a transfer, user_id is the sender: -(amount + fee));
-- a transfer also credits to_user_id with amount.
CREATE OR REPLACE FUNCTION wallet_batch_items(p_operations jsonb)
RETURNS TABLE (ord integer, type text, user_id text, to_user_id text, asset_type text, amount bigint,
               fee bigint, description text, metadata jsonb, delta bigint)
LANGUAGE sql IMMUTABLE AS $$
    SELECT (e.n - 1)::integer, e.op ->> 'type', e.op ->> 'user_id', e.op ->> 'to_user_id', e.op ->> 'asset_type',
           (e.op ->> 'amount')::bigint, coalesce((e.op ->> 'fee')::bigint, 0), e.op ->> 'description',
           coalesce(e.op -> 'metadata', '{}'::jsonb),
           wallet_rule_user_sign(e.op ->> 'type') * (e.op ->> 'amount')::bigint - coalesce((e.op ->> 'fee')::bigint, 0)
    FROM jsonb_array_elements(p_operations) WITH ORDINALITY AS e(op, n)
$$;

-- Posts up to WALLET_MAX_BATCH_OPERATIONS operations atomically: all of them or none.
-- p_operations is a JSON array of {type, user_id, asset_type, amount, description, metadata}, and
-- for a transfer also {to_user_id, fee}: a trade is two transfers in one batch.
-- Lock order: the idempotency lock, then every user account involved (senders, receivers and
-- the users of other operations), in ascending account id, in one statement. Two batches touching
-- the same users in opposite orders therefore lock them in the same order and cannot deadlock.
-- Balances are computed in memory under those locks, and all transactions, all entries and all
-- balance updates are written by one statement each.
CREATE OR REPLACE FUNCTION wallet_post_batch(
    p_api_key_id bigint, p_idempotency_key text, p_operations jsonb,
    OUT outcome text, OUT body jsonb, OUT replayed boolean)
LANGUAGE plpgsql AS $$
DECLARE
    v_fingerprint bytea := sha256(convert_to(p_operations::text, 'UTF8'));
    v_missing record;
    v_outcome record;
    v_ids uuid[];                   -- per operation: the new transaction's id
    v_balances_after bigint[];      -- per operation: the balance of user_id right after it
    v_to_balances_after bigint[];   -- per operation: the receiver's balance right after it (transfers)
    v_first_short integer;          -- the first operation that would overdraw, if any
BEGIN
    replayed := false;
    IF jsonb_typeof(p_operations) <> 'array' OR jsonb_array_length(p_operations) < 1
       OR EXISTS (SELECT 1 FROM wallet_batch_items(p_operations) AS o
                  WHERE o.amount IS NULL OR o.amount <= 0 OR o.fee < 0
                     OR NOT (coalesce(wallet_rule_direct(o.type), false) OR o.type = 'transfer')
                     OR (o.type = 'transfer') <> (o.to_user_id IS NOT NULL)
                     OR (o.type <> 'transfer' AND o.fee <> 0)
                     OR o.to_user_id = o.user_id) THEN
        RAISE EXCEPTION 'a batch needs one or more operations, each with a known type, a positive amount, and for a transfer another user to receive it'
            USING ERRCODE = 'check_violation';
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

    v_outcome := wallet_idempotency_lookup(p_api_key_id, p_idempotency_key, v_fingerprint);
    IF v_outcome.outcome IS NOT NULL THEN
        outcome := v_outcome.outcome;
        body := v_outcome.body;
        replayed := v_outcome.replayed;
        RETURN;
    END IF;

    PERFORM 1 FROM accounts
        WHERE id IN (SELECT a.id FROM wallet_batch_items(p_operations) AS o
                     JOIN accounts a ON a.user_id IN (o.user_id, o.to_user_id) AND a.asset_code = o.asset_type)
        ORDER BY id FOR UPDATE;
    -- Expired holds still in the cached held_minor must not make the batch short.
    PERFORM wallet_release_expired_holds(a.id)
        FROM accounts a
        WHERE a.held_minor > 0
          AND a.id IN (SELECT u.id FROM wallet_batch_items(p_operations) AS o
                       JOIN accounts u ON u.user_id IN (o.user_id, o.to_user_id) AND u.asset_code = o.asset_type);

    -- Under the locks, in one pass over the legs (each operation's change to user_id's account,
    -- and a transfer's credit to the receiver's): the running balance of each account in the
    -- caller's order, and the first debit that would leave less than is held.
    WITH legs AS (
        SELECT l.ord, l.leg, a.held_minor, l.delta,
               a.balance_minor + sum(l.delta) OVER (PARTITION BY a.id ORDER BY l.ord, l.leg) AS balance_after
          FROM (SELECT o.ord, 1 AS leg, o.user_id AS account_user, o.asset_type, o.delta
                  FROM wallet_batch_items(p_operations) AS o
                UNION ALL
                SELECT o.ord, 2, o.to_user_id, o.asset_type, o.amount
                  FROM wallet_batch_items(p_operations) AS o WHERE o.to_user_id IS NOT NULL) AS l
          JOIN accounts a ON a.user_id = l.account_user AND a.asset_code = l.asset_type
    )
    SELECT array_agg(gen_random_uuid() ORDER BY s.ord), array_agg(s.balance_after ORDER BY s.ord),
           array_agg(s.to_balance_after ORDER BY s.ord), min(s.short_ord)
      INTO v_ids, v_balances_after, v_to_balances_after, v_first_short
      FROM (SELECT legs.ord,
                   max(legs.balance_after) FILTER (WHERE legs.leg = 1) AS balance_after,
                   max(legs.balance_after) FILTER (WHERE legs.leg = 2) AS to_balance_after,
                   min(legs.ord) FILTER (WHERE legs.delta < 0 AND legs.balance_after < legs.held_minor) AS short_ord
              FROM legs GROUP BY legs.ord) AS s;
    IF v_first_short IS NOT NULL THEN
        outcome := 'insufficient_funds';
        body := wallet_error_body('insufficient_funds',
            format('operation %s: available balance is less than %s', v_first_short,
                   (p_operations -> v_first_short ->> 'amount')::bigint
                   + coalesce((p_operations -> v_first_short ->> 'fee')::bigint, 0)),
            format('operations[%s].amount', v_first_short));
        INSERT INTO idempotency_keys (api_key_id, key, request_sha256, outcome, response_body)
            VALUES (p_api_key_id, p_idempotency_key, v_fingerprint, outcome, body);
        RETURN;
    END IF;

    -- One statement writes every transaction, every entry and every balance, and returns the
    -- response built from the values in hand.
    WITH ops AS (
        SELECT o.*, v_ids[o.ord + 1] AS id, v_balances_after[o.ord + 1] AS balance_after,
               v_to_balances_after[o.ord + 1] AS to_balance_after
          FROM wallet_batch_items(p_operations) AS o
    ), sides AS (
        -- Every entry of every operation: 1 = user_id's account; 2 = the system account on the
        -- other side, or a transfer's receiver; 3 = a transfer's fee to the system account.
        SELECT ops.ord, ops.id, side.entry_no, side.account_id, side.account, side.kind, side.amount_minor
          FROM ops
          JOIN accounts ua ON ua.user_id = ops.user_id AND ua.asset_code = ops.asset_type
          JOIN accounts sa ON sa.system_code = wallet_rule_system_account(ops.type) AND sa.asset_code = ops.asset_type
          LEFT JOIN accounts ra ON ra.user_id = ops.to_user_id AND ra.asset_code = ops.asset_type
         CROSS JOIN LATERAL (VALUES
                (1::smallint, ua.id, ops.user_id, 'user', ops.delta),
                (2::smallint, coalesce(ra.id, sa.id), coalesce(ops.to_user_id, sa.system_code),
                 CASE WHEN ra.id IS NULL THEN 'system' ELSE 'user' END,
                 CASE WHEN ra.id IS NULL THEN -ops.delta ELSE ops.amount END),
                (3::smallint, sa.id, sa.system_code, 'system', CASE WHEN ra.id IS NULL THEN 0 ELSE ops.fee END))
             AS side(entry_no, account_id, account, kind, amount_minor)
         WHERE side.amount_minor <> 0
    ), posted AS (
        INSERT INTO transactions (id, type, api_key_id, idempotency_key, user_id, asset_code, amount_minor,
                                  balance_after_minor, description, metadata, counterparty_user_id,
                                  counterparty_balance_after_minor, fee_minor)
        SELECT ops.id, ops.type, p_api_key_id, p_idempotency_key, ops.user_id, ops.asset_type, ops.amount,
               ops.balance_after, ops.description, ops.metadata, ops.to_user_id, ops.to_balance_after, ops.fee
        FROM ops ORDER BY ops.ord
        RETURNING id, created_at
    ), entries AS (
        INSERT INTO ledger_entries (transaction_id, entry_no, account_id, asset_code, amount_minor)
        SELECT sides.id, sides.entry_no, sides.account_id, ops.asset_type, sides.amount_minor
        FROM sides JOIN ops ON ops.ord = sides.ord
    ), balances AS (
        UPDATE accounts a SET balance_minor = final.balance_after
        FROM (SELECT DISTINCT ON (u.account_id) u.account_id, u.balance_after
              FROM (SELECT ua.id AS account_id, ops.balance_after, ops.ord, 1 AS leg FROM ops
                      JOIN accounts ua ON ua.user_id = ops.user_id AND ua.asset_code = ops.asset_type
                    UNION ALL
                    SELECT ra.id, ops.to_balance_after, ops.ord, 2 FROM ops
                      JOIN accounts ra ON ra.user_id = ops.to_user_id AND ra.asset_code = ops.asset_type) AS u
              ORDER BY u.account_id, u.ord DESC, u.leg DESC) AS final
        WHERE a.id = final.account_id
    )
    SELECT jsonb_build_object('transactions', jsonb_agg(wallet_transaction_document(
               p.id, ops.type, 'posted', ops.user_id, ops.asset_type, ops.amount, ops.balance_after,
               ops.description, ops.metadata, p_idempotency_key, p.created_at,
               (SELECT jsonb_agg(wallet_entry_document(sides.account_id, sides.account, sides.kind, sides.amount_minor)
                                 ORDER BY sides.entry_no)
                  FROM sides WHERE sides.ord = ops.ord))
           || wallet_transaction_extras(NULL, 0, ops.to_user_id, ops.to_balance_after, ops.fee, NULL)
           ORDER BY ops.ord))
      INTO body
      FROM posted p JOIN ops ON p.id = ops.id;

    outcome := 'posted';
    INSERT INTO idempotency_keys (api_key_id, key, request_sha256, outcome, response_body)
        VALUES (p_api_key_id, p_idempotency_key, v_fingerprint, outcome, body);
END $$;
