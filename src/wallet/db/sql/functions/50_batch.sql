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
-- Balances are computed in memory under those locks, and all transactions, all entries and all
-- balance updates are written by one statement each.
CREATE OR REPLACE FUNCTION wallet_post_batch(
    p_api_key_id bigint, p_idempotency_key text, p_operations jsonb, p_request_id text DEFAULT NULL,
    OUT outcome text, OUT body jsonb, OUT replayed boolean)
LANGUAGE plpgsql AS $$
DECLARE
    v_fingerprint bytea := sha256(convert_to(p_operations::text, 'UTF8'));
    v_missing record;
    v_ids uuid[];                   -- per operation: the new transaction's id
    v_created_ats timestamptz[];    -- per operation: its transaction's created_at
    v_entry_documents jsonb[];      -- per operation: its entries, as the response shows them
    v_account_ids bigint[];         -- per operation: the account of user_id
    v_to_account_ids bigint[];      -- per operation: the receiver's account (transfers), else NULL
    v_system_account_ids bigint[];  -- per operation: the system account on the other side
    v_system_codes text[];
    v_balances_after bigint[];      -- per operation: the balance of user_id right after it
    v_to_balances_after bigint[];   -- per operation: the receiver's balance right after it (transfers)
    v_first_short integer;          -- the first operation that would overdraw, if any
    v_any_held boolean;             -- some account involved has holds (maybe expired ones)
    v_now timestamptz;
    v_resting_ids bigint[];         -- accounts whose holds come to rest on the batch's credits
    v_resting_minor bigint[];       -- and what of their expired credits that lets go
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

    -- Two equi-joins rather than `user_id IN (o.user_id, o.to_user_id)`: an OR in the join
    -- condition kept the planner from the (user_id, asset_code) index, and it scanned every
    -- account, 50 ms per batch on 5,000 users (auto_explain, see docs/PERFORMANCE.md).
    PERFORM 1 FROM accounts
        WHERE id IN (SELECT a.id FROM wallet_batch_items(p_operations) AS o
                     JOIN accounts a ON a.user_id = o.user_id AND a.asset_code = o.asset_type
                     UNION
                     SELECT a.id FROM wallet_batch_items(p_operations) AS o
                     JOIN accounts a ON a.user_id = o.to_user_id AND a.asset_code = o.asset_type)
        ORDER BY id FOR UPDATE;
    -- Accounts with a lot past its expiry are expired first (their own transactions, before the
    -- batch's), so no operation counts expired credits as available, and every balance_after
    -- (credits' and receivers' too) is what a balance read at that instant says.
    PERFORM wallet_expire_lots(a.id) FROM accounts a
     WHERE a.lots_expire_at <= clock_timestamp()
       AND a.id IN (SELECT x.id FROM wallet_batch_items(p_operations) AS o
                    JOIN accounts x ON x.user_id = o.user_id AND x.asset_code = o.asset_type
                    UNION
                    SELECT x.id FROM wallet_batch_items(p_operations) AS o
                    JOIN accounts x ON x.user_id = o.to_user_id AND x.asset_code = o.asset_type);
    -- Due credits left now are reserved by open holds. The batch's credits to such an account let
    -- its holds rest on them, and those due credits go as far as the credits replace them (as
    -- wallet_expire_lots_for does for a single credit): in an expiry posted before the batch's
    -- transactions if the batch goes through; the pass below starts from the balance after it.
    v_now := clock_timestamp();
    SELECT array_agg(r.id), array_agg(r.amount) INTO v_resting_ids, v_resting_minor
      FROM (SELECT a.id, least(d.due, greatest(a.balance_minor + c.credits - a.held_minor, 0)) AS amount
              FROM (SELECT x.id AS account_id, sum(l.amount) AS credits
                      FROM (SELECT o.user_id, o.asset_type, o.delta AS amount FROM wallet_batch_items(p_operations) AS o
                             WHERE o.delta > 0
                            UNION ALL
                            SELECT o.to_user_id, o.asset_type, o.amount FROM wallet_batch_items(p_operations) AS o
                             WHERE o.to_user_id IS NOT NULL) AS l
                      JOIN accounts x ON x.user_id = l.user_id AND x.asset_code = l.asset_type
                     GROUP BY x.id) AS c
              JOIN accounts a ON a.id = c.account_id AND a.held_minor > 0 AND a.lots_expire_at <= v_now
             CROSS JOIN LATERAL (SELECT coalesce(sum(cl.remaining_minor), 0) AS due FROM credit_lots cl
                                  WHERE cl.account_id = a.id AND cl.remaining_minor > 0
                                    AND cl.expires_at <= v_now) AS d) AS r
     WHERE r.amount > 0;

    -- Under the locks, in one pass over the legs (each operation's change to its user's account,
    -- and a transfer's credit to the receiver's): every account involved, the running balance of
    -- each account in the caller's order, and the first debit that would leave less than is held.
    -- Expired holds may still be in the cached held_minor: if they alone make the batch short,
    -- they are released (under the locks) and the pass runs once more.
    FOR v_attempt IN 1..2 LOOP
        WITH legs AS (
            SELECT l.ord, l.leg, a.id AS account_id, a.held_minor, l.delta,
                   a.balance_minor - coalesce(v_resting_minor[array_position(v_resting_ids, a.id)], 0)
                   + sum(l.delta) OVER (PARTITION BY a.id ORDER BY l.ord, l.leg) AS balance_after
              FROM (SELECT o.ord, 1 AS leg, o.user_id AS account_user, o.asset_type, o.delta
                      FROM wallet_batch_items(p_operations) AS o
                    UNION ALL
                    SELECT o.ord, 2, o.to_user_id, o.asset_type, o.amount
                      FROM wallet_batch_items(p_operations) AS o WHERE o.to_user_id IS NOT NULL) AS l
              JOIN accounts a ON a.user_id = l.account_user AND a.asset_code = l.asset_type
        ), per_op AS (
            SELECT legs.ord,
                   max(legs.account_id) FILTER (WHERE legs.leg = 1) AS account_id,
                   max(legs.account_id) FILTER (WHERE legs.leg = 2) AS to_account_id,
                   max(legs.balance_after) FILTER (WHERE legs.leg = 1) AS balance_after,
                   max(legs.balance_after) FILTER (WHERE legs.leg = 2) AS to_balance_after,
                   min(legs.ord) FILTER (WHERE legs.delta < 0 AND legs.balance_after < legs.held_minor) AS short_ord,
                   bool_or(legs.held_minor > 0) AS any_held
              FROM legs GROUP BY legs.ord
        )
        SELECT array_agg(gen_random_uuid() ORDER BY p.ord), array_agg(p.account_id ORDER BY p.ord),
               array_agg(p.to_account_id ORDER BY p.ord), array_agg(sa.id ORDER BY p.ord),
               array_agg(sa.system_code ORDER BY p.ord), array_agg(p.balance_after ORDER BY p.ord),
               array_agg(p.to_balance_after ORDER BY p.ord), min(p.short_ord), bool_or(p.any_held)
          INTO v_ids, v_account_ids, v_to_account_ids, v_system_account_ids, v_system_codes,
               v_balances_after, v_to_balances_after, v_first_short, v_any_held
          FROM per_op p
          JOIN wallet_batch_items(p_operations) AS o ON o.ord = p.ord
          JOIN accounts sa ON sa.system_code = wallet_rule_system_account(o.type) AND sa.asset_code = o.asset_type;
        EXIT WHEN v_first_short IS NULL OR NOT v_any_held OR v_attempt = 2;
        PERFORM wallet_release_expired_holds(a) FROM unnest(v_account_ids || v_to_account_ids) AS a WHERE a IS NOT NULL;
    END LOOP;
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

    PERFORM wallet_post_expiry(a, r.amount, v_now)
       FROM unnest(v_resting_ids, v_resting_minor) AS r(id, amount) JOIN accounts a ON a.id = r.id;

    -- One statement writes every transaction, every entry and every balance, and returns the
    -- response built from the values in hand (no account is looked up again).
    WITH ops AS (
        SELECT o.*, v_ids[o.ord + 1] AS id, v_balances_after[o.ord + 1] AS balance_after,
               v_to_balances_after[o.ord + 1] AS to_balance_after, v_account_ids[o.ord + 1] AS account_id,
               v_to_account_ids[o.ord + 1] AS to_account_id, v_system_account_ids[o.ord + 1] AS system_account_id,
               v_system_codes[o.ord + 1] AS system_code
          FROM wallet_batch_items(p_operations) AS o
    ), sides AS (
        -- Every entry of every operation: 1 = its user's account; 2 = the system account on the
        -- other side, or a transfer's receiver; 3 = a transfer's fee to the system account.
        SELECT ops.ord, ops.id, ops.asset_type, side.entry_no, side.account_id, side.account, side.kind,
               side.amount_minor
          FROM ops
         CROSS JOIN LATERAL (VALUES
                (1::smallint, ops.account_id, ops.user_id, 'user', ops.delta),
                (2::smallint, coalesce(ops.to_account_id, ops.system_account_id),
                 coalesce(ops.to_user_id, ops.system_code),
                 CASE WHEN ops.to_account_id IS NULL THEN 'system' ELSE 'user' END,
                 CASE WHEN ops.to_account_id IS NULL THEN -ops.delta ELSE ops.amount END),
                (3::smallint, ops.system_account_id, ops.system_code, 'system',
                 CASE WHEN ops.to_account_id IS NULL THEN 0 ELSE ops.fee END))
             AS side(entry_no, account_id, account, kind, amount_minor)
         WHERE side.amount_minor <> 0
    ), posted AS (
        INSERT INTO transactions (id, type, api_key_id, idempotency_key, user_id, asset_code, amount_minor,
                                  balance_after_minor, description, metadata, counterparty_user_id,
                                  counterparty_balance_after_minor, fee_minor, request_id, credit_expires_at)
        SELECT ops.id, ops.type, p_api_key_id, p_idempotency_key, ops.user_id, ops.asset_type, ops.amount,
               ops.balance_after, ops.description, ops.metadata, ops.to_user_id, ops.to_balance_after, ops.fee,
               p_request_id,
               coalesce(ops.expires_at, clock_timestamp() + make_interval(secs => ops.expires_in_seconds))
        FROM ops ORDER BY ops.ord
        RETURNING id, created_at
    ), entries AS (
        INSERT INTO ledger_entries (transaction_id, entry_no, account_id, asset_code, amount_minor)
        SELECT sides.id, sides.entry_no, sides.account_id, sides.asset_type, sides.amount_minor FROM sides
    ), balances AS (
        -- Each account's balance after its last leg in the caller's order.
        UPDATE accounts a SET balance_minor = final.balance_after
        FROM (SELECT DISTINCT ON (u.account_id) u.account_id, u.balance_after
              FROM (SELECT ops.account_id, ops.balance_after, ops.ord, 1 AS leg FROM ops
                    UNION ALL
                    SELECT ops.to_account_id, ops.to_balance_after, ops.ord, 2 FROM ops
                     WHERE ops.to_account_id IS NOT NULL) AS u
              ORDER BY u.account_id, u.ord DESC, u.leg DESC) AS final
        WHERE a.id = final.account_id
    ), entry_documents AS (
        -- Each operation's entries, grouped once (a subquery per operation rescanned every side).
        SELECT sides.ord, jsonb_agg(wallet_entry_document(sides.account_id, sides.account, sides.kind,
                                                          sides.amount_minor) ORDER BY sides.entry_no) AS entries
          FROM sides GROUP BY sides.ord
    )
    SELECT array_agg(p.created_at ORDER BY ops.ord), array_agg(d.entries ORDER BY ops.ord)
      INTO v_created_ats, v_entry_documents
      FROM posted p JOIN ops ON p.id = ops.id JOIN entry_documents d ON d.ord = ops.ord;
    -- The response, built once the statement's trigger has written the lots each operation
    -- moved (read for the whole batch in one query).
    SELECT jsonb_build_object('transactions', jsonb_agg(wallet_transaction_document(
               v_ids[o.ord + 1], o.type, 'posted', o.user_id, o.asset_type, o.amount, v_balances_after[o.ord + 1],
               o.description, o.metadata, p_idempotency_key, v_created_ats[o.ord + 1], v_entry_documents[o.ord + 1])
           || wallet_transaction_extras(NULL, 0, o.to_user_id, v_to_balances_after[o.ord + 1], o.fee, NULL)
           || jsonb_build_object('lots', coalesce(l.lots, '[]'::jsonb))
           ORDER BY o.ord))
      INTO body
      FROM wallet_batch_items(p_operations) AS o
      LEFT JOIN wallet_transactions_lots(v_ids) AS l ON l.transaction_id = v_ids[o.ord + 1];

    outcome := 'posted';
    INSERT INTO idempotency_keys (api_key_id, key, request_sha256, outcome, response_body)
        VALUES (p_api_key_id, p_idempotency_key, v_fingerprint, outcome, body);
END $$;
