-- The core ledger. Every invariant the service promises is enforced here, by the database, so that
-- no bug in Python, no psql session and no future caller can break it:
--   * entries of a transaction sum to zero per asset and number at least two (deferred trigger);
--   * a user's cached balance never goes below zero (CHECK);
--   * ledger entries and posted transactions are append-only (triggers reject UPDATE/DELETE/TRUNCATE);
--   * an idempotency key is unique per calling API key (primary key).
-- The posting logic itself is the function wallet_post_transaction, so that one HTTP request costs
-- one database round trip and a row lock is held only while the server runs that function.

CREATE TABLE asset_types (
    code        text PRIMARY KEY CHECK (code ~ '^[A-Z][A-Z0-9_]{1,31}$'),
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    scale       smallint NOT NULL DEFAULT 0 CHECK (scale BETWEEN 0 AND 18),
    is_active   boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE users (
    id          text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9_.:-]{1,64}$'),
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    key_prefix  text NOT NULL CHECK (length(key_prefix) BETWEEN 1 AND 16),
    key_sha256  bytea NOT NULL UNIQUE CHECK (length(key_sha256) = 32),
    scopes      text[] NOT NULL CHECK (cardinality(scopes) > 0
                                       AND scopes <@ ARRAY['read', 'credit', 'spend', 'admin']),
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

-- One row per (user, asset) and per (system purpose, asset).
-- User accounts carry a cached balance, updated under a row lock by each posting and checked
-- against the ledger by `wallet verify`. System accounts carry none: their balance is derived
-- from the ledger (SUM of entries), so no posting ever updates or locks a system row and a top-up
-- for one user never queues behind a top-up for another.
-- held_minor is reserved for holds (available = balance - held); nothing places holds yet.
CREATE TABLE accounts (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind          text NOT NULL CHECK (kind IN ('user', 'system')),
    user_id       text REFERENCES users (id),
    system_code   text CHECK (system_code ~ '^SYSTEM_[A-Z_]{1,40}$'),
    asset_code    text NOT NULL REFERENCES asset_types (code),
    balance_minor bigint NOT NULL DEFAULT 0,
    held_minor    bigint NOT NULL DEFAULT 0,
    created_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT account_owner_matches_kind
        CHECK ((kind = 'user') = (user_id IS NOT NULL) AND (kind = 'system') = (system_code IS NOT NULL)),
    CONSTRAINT user_balance_never_negative
        CHECK (kind <> 'user' OR (balance_minor >= 0 AND held_minor >= 0 AND held_minor <= balance_minor)),
    CONSTRAINT system_balance_is_derived
        CHECK (kind <> 'system' OR (balance_minor = 0 AND held_minor = 0)),
    UNIQUE (user_id, asset_code),
    UNIQUE (system_code, asset_code)
);

CREATE TABLE transactions (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    seq                 bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    type                text NOT NULL CHECK (type IN ('topup', 'bonus', 'spend')),
    -- 'pending' and 'voided' are reserved for holds; every transaction posted today is 'posted'.
    status              text NOT NULL DEFAULT 'posted' CHECK (status IN ('pending', 'posted', 'voided')),
    api_key_id          bigint NOT NULL REFERENCES api_keys (id),
    idempotency_key     text NOT NULL CHECK (length(idempotency_key) BETWEEN 1 AND 255),
    user_id             text NOT NULL REFERENCES users (id),
    asset_code          text NOT NULL REFERENCES asset_types (code),
    amount_minor        bigint NOT NULL CHECK (amount_minor > 0),
    balance_after_minor bigint NOT NULL CHECK (balance_after_minor >= 0),
    description         text CHECK (length(description) <= 10000),
    metadata            jsonb NOT NULL DEFAULT '{}'::jsonb
                        CHECK (jsonb_typeof(metadata) = 'object' AND pg_column_size(metadata) <= 65536),
    created_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX transactions_user_history ON transactions (user_id, seq DESC);
CREATE INDEX transactions_user_asset_history ON transactions (user_id, asset_code, seq DESC);

-- Signed amounts: positive increases the account, negative decreases it.
CREATE TABLE ledger_entries (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    transaction_id uuid NOT NULL REFERENCES transactions (id),
    account_id     bigint NOT NULL REFERENCES accounts (id),
    asset_code     text NOT NULL REFERENCES asset_types (code),
    amount_minor   bigint NOT NULL CHECK (amount_minor <> 0),
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ledger_entries_by_transaction ON ledger_entries (transaction_id);
CREATE INDEX ledger_entries_by_account ON ledger_entries (account_id, id);

-- The stored outcome of a write, keyed per caller. The key row, the ledger rows and the response
-- commit in one database transaction: after a crash there is either all of it or none of it.
CREATE TABLE idempotency_keys (
    api_key_id     bigint NOT NULL REFERENCES api_keys (id),
    key            text NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    request_sha256 bytea NOT NULL CHECK (length(request_sha256) = 32),
    status_code    smallint CHECK (status_code BETWEEN 200 AND 499),
    response_body  jsonb,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (api_key_id, key)
);
CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at);

-------------------------------------------------------------------------------------------------
-- Invariants enforced by triggers.
-------------------------------------------------------------------------------------------------

CREATE FUNCTION wallet_reject_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % is not allowed', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'restrict_violation';
END $$;

CREATE TRIGGER ledger_entries_append_only BEFORE UPDATE OR DELETE ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION wallet_reject_change();
CREATE TRIGGER ledger_entries_no_truncate BEFORE TRUNCATE ON ledger_entries
    FOR EACH STATEMENT EXECUTE FUNCTION wallet_reject_change();
CREATE TRIGGER transactions_no_delete BEFORE DELETE ON transactions
    FOR EACH ROW EXECUTE FUNCTION wallet_reject_change();
CREATE TRIGGER transactions_no_truncate BEFORE TRUNCATE ON transactions
    FOR EACH STATEMENT EXECUTE FUNCTION wallet_reject_change();
CREATE TRIGGER accounts_no_delete BEFORE DELETE ON accounts
    FOR EACH ROW EXECUTE FUNCTION wallet_reject_change();

-- A posted or voided transaction is final. Only a pending one (a future hold) may change, and then
-- only its status.
CREATE FUNCTION wallet_transactions_guard_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status <> 'pending'
       OR (to_jsonb(NEW) - 'status') IS DISTINCT FROM (to_jsonb(OLD) - 'status') THEN
        RAISE EXCEPTION 'transaction % is % and cannot be updated', OLD.id, OLD.status
            USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER transactions_final BEFORE UPDATE ON transactions
    FOR EACH ROW EXECUTE FUNCTION wallet_transactions_guard_update();

-- Checked at commit, once the whole transaction is written: both on the transaction row (so a
-- transaction without entries cannot commit) and on every entry (so entries cannot be added later).
CREATE FUNCTION wallet_assert_transaction_balanced(p_transaction_id uuid) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_entry_count integer;
    v_unbalanced_asset text;
BEGIN
    SELECT count(*) INTO v_entry_count FROM ledger_entries WHERE transaction_id = p_transaction_id;
    IF v_entry_count < 2 THEN
        RAISE EXCEPTION 'transaction % has % ledger entries; at least 2 are required',
            p_transaction_id, v_entry_count USING ERRCODE = 'check_violation';
    END IF;
    SELECT asset_code INTO v_unbalanced_asset FROM ledger_entries
        WHERE transaction_id = p_transaction_id
        GROUP BY asset_code HAVING sum(amount_minor) <> 0 LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'ledger entries of transaction % do not sum to zero in %',
            p_transaction_id, v_unbalanced_asset USING ERRCODE = 'check_violation';
    END IF;
END $$;

CREATE FUNCTION wallet_transactions_check_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM wallet_assert_transaction_balanced(NEW.id);
    RETURN NULL;
END $$;
CREATE FUNCTION wallet_ledger_entries_check_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM wallet_assert_transaction_balanced(NEW.transaction_id);
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER transactions_balanced AFTER INSERT ON transactions
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION wallet_transactions_check_balanced();
CREATE CONSTRAINT TRIGGER ledger_entries_balanced AFTER INSERT ON ledger_entries
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION wallet_ledger_entries_check_balanced();

-------------------------------------------------------------------------------------------------
-- Reference data. Used by `wallet seed`, seed.sql and the HTTP API alike, so all give one state.
-------------------------------------------------------------------------------------------------

-- The system accounts every asset has, one per purpose, so revenue, purchases and promotions can
-- be told apart in the books.
CREATE FUNCTION wallet_system_codes() RETURNS text[] LANGUAGE sql IMMUTABLE AS $$
    SELECT ARRAY['SYSTEM_TREASURY', 'SYSTEM_PROMOTIONS', 'SYSTEM_REVENUE']
$$;

CREATE FUNCTION wallet_ensure_asset(p_code text, p_name text, p_scale smallint) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO asset_types (code, name, scale) VALUES (p_code, p_name, p_scale)
        ON CONFLICT (code) DO NOTHING;
    INSERT INTO accounts (kind, system_code, asset_code)
        SELECT 'system', s.code, p_code FROM unnest(wallet_system_codes()) AS s(code)
        ON CONFLICT DO NOTHING;
    INSERT INTO accounts (kind, user_id, asset_code)
        SELECT 'user', u.id, p_code FROM users u
        ON CONFLICT DO NOTHING;
$$;

-- Creates the user and one account per asset. Returns true when the user was created now.
CREATE FUNCTION wallet_ensure_user(p_user_id text, p_name text) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_created boolean;
BEGIN
    INSERT INTO users (id, name) VALUES (p_user_id, p_name) ON CONFLICT (id) DO NOTHING;
    v_created := FOUND;
    INSERT INTO accounts (kind, user_id, asset_code)
        SELECT 'user', p_user_id, a.code FROM asset_types a
        ON CONFLICT DO NOTHING;
    RETURN v_created;
END $$;

-------------------------------------------------------------------------------------------------
-- Posting. One call = one database transaction = one HTTP write.
-------------------------------------------------------------------------------------------------

CREATE FUNCTION wallet_error_body(p_code text, p_message text, p_field text) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT jsonb_build_object('error', jsonb_build_object('code', p_code, 'message', p_message, 'field', p_field))
$$;

-- The public JSON of a transaction. Both the write response and GET /transactions/{id} use it,
-- so a replay, a read and the original answer are byte-for-byte the same document.
CREATE FUNCTION wallet_transaction_json(p_transaction_id uuid) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'id', t.id,
        'type', t.type,
        'status', t.status,
        'user_id', t.user_id,
        'asset_type', t.asset_code,
        'amount', t.amount_minor,
        'balance_after', t.balance_after_minor,
        'description', t.description,
        'metadata', t.metadata,
        'idempotency_key', t.idempotency_key,
        'created_at', to_char(t.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
        'entries', (
            SELECT jsonb_agg(jsonb_build_object(
                       'account_id', e.account_id,
                       'account', coalesce(a.user_id, a.system_code),
                       'account_kind', a.kind,
                       'amount', e.amount_minor) ORDER BY e.id)
            FROM ledger_entries e JOIN accounts a ON a.id = e.account_id
            WHERE e.transaction_id = t.id))
    FROM transactions t WHERE t.id = p_transaction_id
$$;

-- Claims (caller, key) for this database transaction. Returns NULLs when the key is new and now
-- ours; otherwise the answer to give: the stored outcome (a replay), 422 when the stored request
-- differs, or 409 when another request holding the key outlasts lock_timeout.
-- A concurrent request with the same key blocks on the unique index until the holder commits,
-- then sees its stored outcome: so exactly one of them writes.
CREATE FUNCTION wallet_claim_idempotency_key(
    p_api_key_id bigint, p_idempotency_key text, p_fingerprint bytea,
    OUT status_code integer, OUT body jsonb, OUT replayed boolean)
LANGUAGE plpgsql AS $$
DECLARE
    v_stored record;
BEGIN
    replayed := false;
    BEGIN
        INSERT INTO idempotency_keys (api_key_id, key, request_sha256)
            VALUES (p_api_key_id, p_idempotency_key, p_fingerprint)
            ON CONFLICT (api_key_id, key) DO NOTHING;
    EXCEPTION WHEN lock_not_available THEN
        status_code := 409;
        body := wallet_error_body('idempotency_key_in_use',
            'another request with this idempotency key is still being processed; retry later',
            'idempotency_key');
        RETURN;
    END;
    IF FOUND THEN
        RETURN;
    END IF;
    SELECT k.request_sha256, k.status_code, k.response_body INTO STRICT v_stored
        FROM idempotency_keys k WHERE k.api_key_id = p_api_key_id AND k.key = p_idempotency_key;
    IF v_stored.request_sha256 <> p_fingerprint THEN
        status_code := 422;
        body := wallet_error_body('idempotency_key_reused',
            'this idempotency key was already used with a different request', 'idempotency_key');
        RETURN;
    END IF;
    status_code := v_stored.status_code;
    body := v_stored.response_body;
    replayed := true;
END $$;

-- Posts a top-up, bonus or spend for one user, idempotently.
--
-- Order of work, which is also the lock order (deadlock-free: every caller takes at most one
-- idempotency key, then at most one user account row, always in this order):
--   1. resolve the user's account (no lock); unknown user or asset -> 404, nothing written;
--   2. claim the idempotency key (a concurrent request with the same key waits here, then replays);
--   3. update the user's cached balance under its row lock; a short balance -> 409, stored;
--   4. write the transaction and its two entries (the system side is never locked);
--   5. store the response beside the key.
-- Returns the HTTP status, the response body and whether it is a replay.
CREATE FUNCTION wallet_post_transaction(
    p_api_key_id bigint, p_idempotency_key text, p_type text, p_user_id text, p_asset_code text,
    p_amount_minor bigint, p_description text, p_metadata jsonb,
    OUT status_code integer, OUT body jsonb, OUT replayed boolean)
LANGUAGE plpgsql AS $$
DECLARE
    v_fingerprint bytea;
    v_user_account_id bigint;
    v_system_account_id bigint;
    v_delta_minor bigint;
    v_balance_minor bigint;
    v_transaction_id uuid;
BEGIN
    replayed := false;
    IF p_amount_minor IS NULL OR p_amount_minor <= 0 THEN
        RAISE EXCEPTION 'amount must be positive' USING ERRCODE = 'check_violation';
    END IF;
    p_metadata := coalesce(p_metadata, '{}'::jsonb);
    -- The fingerprint is computed here, from the parsed values, so that every caller (HTTP,
    -- `wallet seed`, seed.sql) agrees on what "the same request" is.
    v_fingerprint := sha256(convert_to(jsonb_build_object(
        'type', p_type, 'user_id', p_user_id, 'asset_type', p_asset_code,
        'amount', p_amount_minor, 'description', p_description, 'metadata', p_metadata)::text, 'UTF8'));

    SELECT a.id INTO v_user_account_id FROM accounts a
        JOIN asset_types t ON t.code = a.asset_code AND t.is_active
        WHERE a.user_id = p_user_id AND a.asset_code = p_asset_code;
    IF NOT FOUND THEN
        status_code := 404;
        IF NOT EXISTS (SELECT 1 FROM users WHERE id = p_user_id) THEN
            body := wallet_error_body('user_not_found', format('no user with id %s', p_user_id), 'user_id');
        ELSE
            body := wallet_error_body('asset_type_not_found',
                format('no active asset type with code %s', p_asset_code), 'asset_type');
        END IF;
        RETURN;
    END IF;

    SELECT c.status_code, c.body, c.replayed INTO status_code, body, replayed
        FROM wallet_claim_idempotency_key(p_api_key_id, p_idempotency_key, v_fingerprint) c;
    IF status_code IS NOT NULL THEN
        RETURN;
    END IF;

    IF p_type = 'spend' THEN
        v_delta_minor := -p_amount_minor;
        UPDATE accounts SET balance_minor = balance_minor - p_amount_minor
            WHERE id = v_user_account_id AND balance_minor - held_minor >= p_amount_minor
            RETURNING balance_minor INTO v_balance_minor;
        IF NOT FOUND THEN
            status_code := 409;
            body := wallet_error_body('insufficient_funds',
                format('available balance of %s %s is less than %s', p_user_id, p_asset_code, p_amount_minor),
                'amount');
            UPDATE idempotency_keys SET status_code = 409, response_body = body
                WHERE api_key_id = p_api_key_id AND key = p_idempotency_key;
            RETURN;
        END IF;
        SELECT id INTO STRICT v_system_account_id FROM accounts
            WHERE system_code = 'SYSTEM_REVENUE' AND asset_code = p_asset_code;
    ELSIF p_type IN ('topup', 'bonus') THEN
        v_delta_minor := p_amount_minor;
        UPDATE accounts SET balance_minor = balance_minor + p_amount_minor
            WHERE id = v_user_account_id
            RETURNING balance_minor INTO v_balance_minor;
        SELECT id INTO STRICT v_system_account_id FROM accounts
            WHERE system_code = CASE p_type WHEN 'topup' THEN 'SYSTEM_TREASURY' ELSE 'SYSTEM_PROMOTIONS' END
              AND asset_code = p_asset_code;
    ELSE
        RAISE EXCEPTION 'unknown transaction type %', p_type USING ERRCODE = 'check_violation';
    END IF;

    INSERT INTO transactions (type, api_key_id, idempotency_key, user_id, asset_code, amount_minor,
                              balance_after_minor, description, metadata)
        VALUES (p_type, p_api_key_id, p_idempotency_key, p_user_id, p_asset_code, p_amount_minor,
                v_balance_minor, p_description, p_metadata)
        RETURNING id INTO v_transaction_id;
    INSERT INTO ledger_entries (transaction_id, account_id, asset_code, amount_minor) VALUES
        (v_transaction_id, v_user_account_id, p_asset_code, v_delta_minor),
        (v_transaction_id, v_system_account_id, p_asset_code, -v_delta_minor);

    status_code := 201;
    body := wallet_transaction_json(v_transaction_id);
    UPDATE idempotency_keys SET status_code = 201, response_body = body
        WHERE api_key_id = p_api_key_id AND key = p_idempotency_key;
END $$;

-- The operations of a batch as rows, numbered from 0 in the caller's order.
CREATE FUNCTION wallet_batch_operations(p_operations jsonb)
RETURNS TABLE (ord integer, type text, user_id text, asset_type text, amount bigint,
               description text, metadata jsonb)
LANGUAGE sql IMMUTABLE AS $$
    SELECT (e.n - 1)::integer, e.op ->> 'type', e.op ->> 'user_id', e.op ->> 'asset_type',
           (e.op ->> 'amount')::bigint, e.op ->> 'description', coalesce(e.op -> 'metadata', '{}'::jsonb)
    FROM jsonb_array_elements(p_operations) WITH ORDINALITY AS e(op, n)
$$;

-- Posts up to WALLET_MAX_BATCH_OPERATIONS operations atomically: all of them or none.
-- p_operations is a JSON array of {type, user_id, asset_type, amount, description, metadata}.
-- Lock order: the idempotency key, then every user account involved, in ascending account id,
-- in one statement. Two batches touching the same users in opposite orders therefore lock them
-- in the same order and cannot deadlock.
CREATE FUNCTION wallet_post_batch(
    p_api_key_id bigint, p_idempotency_key text, p_operations jsonb,
    OUT status_code integer, OUT body jsonb, OUT replayed boolean)
LANGUAGE plpgsql AS $$
DECLARE
    v_fingerprint bytea := sha256(convert_to(p_operations::text, 'UTF8'));
    v_operation_count integer := jsonb_array_length(p_operations);
    v_missing record;
    v_op record;
    v_account_ids bigint[];
    v_balance jsonb;   -- account id -> running balance
    v_held jsonb;      -- account id -> held amount
    v_new_balance bigint;
    v_transaction_id uuid;
    v_transaction_ids uuid[] := '{}';
BEGIN
    replayed := false;
    IF v_operation_count < 1 THEN
        RAISE EXCEPTION 'a batch needs at least one operation' USING ERRCODE = 'check_violation';
    END IF;

    SELECT o.ord, o.user_id, o.asset_type, (u.id IS NOT NULL) AS user_exists INTO v_missing
        FROM wallet_batch_operations(p_operations) AS o
        LEFT JOIN users u ON u.id = o.user_id
        LEFT JOIN accounts a ON a.user_id = o.user_id AND a.asset_code = o.asset_type
        LEFT JOIN asset_types t ON t.code = o.asset_type AND t.is_active
        WHERE a.id IS NULL OR t.code IS NULL
        ORDER BY o.ord LIMIT 1;
    IF FOUND THEN
        status_code := 404;
        IF NOT v_missing.user_exists THEN
            body := wallet_error_body('user_not_found', format('no user with id %s', v_missing.user_id),
                format('operations[%s].user_id', v_missing.ord));
        ELSE
            body := wallet_error_body('asset_type_not_found',
                format('no active asset type with code %s', v_missing.asset_type),
                format('operations[%s].asset_type', v_missing.ord));
        END IF;
        RETURN;
    END IF;

    SELECT c.status_code, c.body, c.replayed INTO status_code, body, replayed
        FROM wallet_claim_idempotency_key(p_api_key_id, p_idempotency_key, v_fingerprint) c;
    IF status_code IS NOT NULL THEN
        RETURN;
    END IF;

    SELECT array_agg(DISTINCT a.id ORDER BY a.id) INTO v_account_ids
        FROM wallet_batch_operations(p_operations) AS o
        JOIN accounts a ON a.user_id = o.user_id AND a.asset_code = o.asset_type;
    SELECT jsonb_object_agg(l.id::text, l.balance_minor), jsonb_object_agg(l.id::text, l.held_minor)
        INTO v_balance, v_held
        FROM (SELECT id, balance_minor, held_minor FROM accounts
              WHERE id = ANY (v_account_ids) ORDER BY id FOR UPDATE) AS l;

    -- Dry run under the locks: the first operation that would overdraw fails the whole batch.
    FOR v_op IN
        SELECT o.ord, o.type, o.amount, a.id AS account_id
        FROM wallet_batch_operations(p_operations) AS o
        JOIN accounts a ON a.user_id = o.user_id AND a.asset_code = o.asset_type
        ORDER BY o.ord
    LOOP
        IF v_op.amount IS NULL OR v_op.amount <= 0 OR v_op.type NOT IN ('topup', 'bonus', 'spend') THEN
            RAISE EXCEPTION 'operation % is invalid', v_op.ord USING ERRCODE = 'check_violation';
        END IF;
        v_new_balance := (v_balance ->> v_op.account_id::text)::bigint
                         + CASE v_op.type WHEN 'spend' THEN -v_op.amount ELSE v_op.amount END;
        IF v_new_balance < (v_held ->> v_op.account_id::text)::bigint THEN
            status_code := 409;
            body := wallet_error_body('insufficient_funds',
                format('operation %s: available balance is less than %s', v_op.ord, v_op.amount),
                format('operations[%s].amount', v_op.ord));
            UPDATE idempotency_keys SET status_code = 409, response_body = body
                WHERE api_key_id = p_api_key_id AND key = p_idempotency_key;
            RETURN;
        END IF;
        v_balance := jsonb_set(v_balance, ARRAY[v_op.account_id::text], to_jsonb(v_new_balance));
    END LOOP;

    -- Write: the running balances again, now with the transactions and their entries.
    SELECT jsonb_object_agg(id::text, balance_minor) INTO v_balance
        FROM accounts WHERE id = ANY (v_account_ids);
    FOR v_op IN
        SELECT o.ord, o.type, o.user_id, o.asset_type, o.amount, o.description,
               o.metadata, a.id AS account_id, s.id AS system_account_id
        FROM wallet_batch_operations(p_operations) AS o
        JOIN accounts a ON a.user_id = o.user_id AND a.asset_code = o.asset_type
        JOIN accounts s ON s.asset_code = o.asset_type AND s.system_code =
             CASE o.type WHEN 'topup' THEN 'SYSTEM_TREASURY' WHEN 'bonus' THEN 'SYSTEM_PROMOTIONS' ELSE 'SYSTEM_REVENUE' END
        ORDER BY o.ord
    LOOP
        v_new_balance := (v_balance ->> v_op.account_id::text)::bigint
                         + CASE v_op.type WHEN 'spend' THEN -v_op.amount ELSE v_op.amount END;
        v_balance := jsonb_set(v_balance, ARRAY[v_op.account_id::text], to_jsonb(v_new_balance));
        INSERT INTO transactions (type, api_key_id, idempotency_key, user_id, asset_code, amount_minor,
                                  balance_after_minor, description, metadata)
            VALUES (v_op.type, p_api_key_id, p_idempotency_key, v_op.user_id, v_op.asset_type, v_op.amount,
                    v_new_balance, v_op.description, v_op.metadata)
            RETURNING id INTO v_transaction_id;
        INSERT INTO ledger_entries (transaction_id, account_id, asset_code, amount_minor) VALUES
            (v_transaction_id, v_op.account_id, v_op.asset_type,
             CASE v_op.type WHEN 'spend' THEN -v_op.amount ELSE v_op.amount END),
            (v_transaction_id, v_op.system_account_id, v_op.asset_type,
             CASE v_op.type WHEN 'spend' THEN v_op.amount ELSE -v_op.amount END);
        v_transaction_ids := v_transaction_ids || v_transaction_id;
    END LOOP;
    UPDATE accounts a SET balance_minor = (v_balance ->> a.id::text)::bigint
        WHERE a.id = ANY (v_account_ids);

    status_code := 201;
    SELECT jsonb_build_object('transactions', jsonb_agg(wallet_transaction_json(t.id) ORDER BY t.n))
        INTO body FROM unnest(v_transaction_ids) WITH ORDINALITY AS t(id, n);
    UPDATE idempotency_keys SET status_code = 201, response_body = body
        WHERE api_key_id = p_api_key_id AND key = p_idempotency_key;
END $$;
