-- Re-installed by every `wallet migrate` (after the versioned migrations); see wallet.db.migrate.
-- The public JSON documents: errors, transactions, ledger entries.

CREATE OR REPLACE FUNCTION wallet_error_body(p_code text, p_message text, p_field text) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object('error', jsonb_build_object('code', p_code, 'message', p_message, 'field', p_field))
$$;

-- The public JSON of a transaction and of a ledger entry. The write response, a replay,
-- GET /transactions/{id} and the history are all built by these two functions, so they are the
-- same document. Plain SQL expressions, so PostgreSQL inlines them (STABLE, as jsonb_build_object
-- and to_char are; an IMMUTABLE label would stop the inlining): the posting functions build
-- the response from values they already hold, without querying the rows back.
CREATE OR REPLACE FUNCTION wallet_entry_document(p_account_id bigint, p_account text, p_account_kind text,
                                      p_amount_minor bigint) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object('account_id', p_account_id, 'account', p_account,
                              'account_kind', p_account_kind, 'amount', p_amount_minor)
$$;

CREATE OR REPLACE FUNCTION wallet_transaction_document(
    p_id uuid, p_type text, p_status text, p_user_id text, p_asset_code text, p_amount_minor bigint,
    p_balance_after_minor bigint, p_description text, p_metadata jsonb, p_idempotency_key text,
    p_created_at timestamptz, p_entries jsonb) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'id', p_id,
        'type', p_type,
        'status', p_status,
        'user_id', p_user_id,
        'asset_type', p_asset_code,
        'amount', p_amount_minor,
        'balance_after', p_balance_after_minor,
        'description', p_description,
        'metadata', p_metadata,
        'idempotency_key', p_idempotency_key,
        'created_at', to_char(p_created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
        'entries', p_entries)
$$;

-- What the ledger operations added to a transaction's document, in every document alike: the
-- transaction it reverses and how much of it was reversed since, the other user of a transfer
-- and their balance after it, the fee, and the hold a capture took.
CREATE OR REPLACE FUNCTION wallet_transaction_extras(
    p_reverses uuid, p_reversed_amount_minor bigint, p_counterparty_user_id text,
    p_counterparty_balance_after_minor bigint, p_fee_minor bigint, p_hold_id uuid) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'reverses', p_reverses,
        'reversed_amount', p_reversed_amount_minor,
        'counterparty_user_id', p_counterparty_user_id,
        'counterparty_balance_after', p_counterparty_balance_after_minor,
        'fee', p_fee_minor,
        'hold_id', p_hold_id)
$$;

-- Stored transactions as a JSON array, in the order of the ids given: as they read now
-- (reversed_amount counts the reversals since), or, p_as_posted, as they were answered when
-- posted (nothing reversed yet): the write's answer and every replay of it are rendered by this
-- one function from the stored rows, so they are the same document, byte for byte.
-- PL/pgSQL rather than SQL: PostgreSQL re-plans a non-inlined SQL function on every call;
-- PL/pgSQL caches the plan. Each row is found by its key (LATERAL ... LIMIT 1 is not pulled up
-- into a join): planned as joins, a ledger whose statistics predate its growth (autovacuum off,
-- a bulk load) got a hash join over all of `transactions` in every write's answer (issue 20:
-- 34 ms a top-up instead of 0.2).
CREATE OR REPLACE FUNCTION wallet_transactions_document(p_transaction_ids uuid[], p_as_posted boolean)
RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (
        SELECT coalesce(jsonb_agg(wallet_transaction_document(
            t.id, t.type, t.status, t.user_id, t.asset_code, t.amount_minor, t.balance_after_minor,
            t.description, t.metadata, t.idempotency_key, t.created_at,
            (SELECT jsonb_agg(wallet_entry_document(e.account_id, coalesce(a.user_id, a.system_code),
                                                    a.kind, e.amount_minor) ORDER BY e.entry_no)
             FROM ledger_entries e
             CROSS JOIN LATERAL (SELECT x.user_id, x.system_code, x.kind FROM accounts x
                                  WHERE x.id = e.account_id LIMIT 1) a
             WHERE e.transaction_id = t.id))
            || wallet_transaction_extras(t.reverses,
                                         CASE WHEN p_as_posted THEN 0
                                              ELSE coalesce((SELECT r.reversed_amount_minor FROM reversal_totals r
                                                              WHERE r.transaction_id = t.id), 0) END,
                                         t.counterparty_user_id, t.counterparty_balance_after_minor, t.fee_minor,
                                         t.hold_id)
            || jsonb_build_object('lots', wallet_transaction_lots(t.id))
        ORDER BY ids.n), '[]'::jsonb)
        FROM unnest(p_transaction_ids) WITH ORDINALITY AS ids(id, n)
        CROSS JOIN LATERAL (SELECT x.* FROM transactions x WHERE x.id = ids.id LIMIT 1) t);
END $$;

CREATE OR REPLACE FUNCTION wallet_transactions_json(p_transaction_ids uuid[]) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN wallet_transactions_document(p_transaction_ids, false);
END $$;

CREATE OR REPLACE FUNCTION wallet_transaction_json(p_transaction_id uuid) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN wallet_transactions_json(ARRAY[p_transaction_id]) -> 0;
END $$;

-- Why a user's account of an asset could not be found: the user is unknown (named by p_user_field)
-- or the asset is unknown or inactive (named by p_asset_field). Used on the refusal path of every posting function.
CREATE OR REPLACE FUNCTION wallet_missing_account(p_user_id text, p_asset_code text, p_user_field text, p_asset_field text,
                                                  OUT outcome text, OUT body jsonb)
LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM users WHERE id = p_user_id) THEN
        outcome := 'user_not_found';
        body := wallet_error_body(outcome, format('no user with id %s', p_user_id), p_user_field);
    ELSE
        outcome := 'asset_type_not_found';
        body := wallet_error_body(outcome, format('no active asset type with code %s', p_asset_code), p_asset_field);
    END IF;
END $$;
