-- The core ledger. Every invariant the service promises is enforced here, by the database, so that
-- no bug in Python, no psql session and no future caller can break it:
--   * entries of a transaction sum to zero and number at least two, all written at once (triggers);
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
    system_code   text,
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

-- A transaction moves one asset between one user account and one system account.
-- Its references (user, asset type, the caller's API key, the accounts of its entries) are not
-- FOREIGN KEYs: a foreign-key check takes a KEY SHARE lock on the referenced row, which is
-- WAL-logged, and with every concurrent posting locking the same few rows (the asset, the API key,
-- the system account) PostgreSQL builds a multixact per locker. The statement-level triggers below
-- check the same references without locks, once per statement; that is as strong because the
-- referenced rows can never be deleted (triggers) nor their keys changed (identity columns, and
-- keys referenced by accounts' own foreign keys).
CREATE TABLE transactions (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    -- Insertion order, for newest-first history with a stable cursor.
    seq                 bigint GENERATED ALWAYS AS IDENTITY,
    type                text NOT NULL CHECK (type IN ('topup', 'bonus', 'spend')),
    -- 'pending' and 'voided' are reserved for holds; every transaction posted today is 'posted'.
    status              text NOT NULL DEFAULT 'posted' CHECK (status IN ('pending', 'posted', 'voided')),
    api_key_id          bigint NOT NULL,
    idempotency_key     text NOT NULL CHECK (length(idempotency_key) BETWEEN 1 AND 255),
    user_id             text NOT NULL,
    asset_code          text NOT NULL,
    amount_minor        bigint NOT NULL CHECK (amount_minor > 0),
    balance_after_minor bigint NOT NULL CHECK (balance_after_minor >= 0),
    description         text CHECK (length(description) <= 10000),
    metadata            jsonb NOT NULL DEFAULT '{}'::jsonb
                        CHECK (jsonb_typeof(metadata) = 'object' AND pg_column_size(metadata) <= 65536),
    created_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX transactions_user_history ON transactions (user_id, seq DESC);
CREATE INDEX transactions_user_asset_history ON transactions (user_id, asset_code, seq DESC);

-- Signed amounts: positive increases the account, negative decreases it. Entries of a transaction
-- are numbered 1..n and written by one INSERT statement (checked below).
CREATE TABLE ledger_entries (
    transaction_id uuid NOT NULL,
    entry_no       smallint NOT NULL CHECK (entry_no >= 1),
    account_id     bigint NOT NULL,
    asset_code     text NOT NULL,
    amount_minor   bigint NOT NULL CHECK (amount_minor <> 0),
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (transaction_id, entry_no)
);

-- The stored outcome of a write, keyed per caller. It is inserted in the same database
-- transaction as the ledger rows it describes: after a crash there is all of it or none of it.
CREATE TABLE idempotency_keys (
    api_key_id     bigint NOT NULL,
    key            text NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    request_sha256 bytea NOT NULL CHECK (length(request_sha256) = 32),
    status_code    smallint NOT NULL CHECK (status_code BETWEEN 200 AND 499),
    response_body  jsonb NOT NULL,
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
-- Rows that ledger rows refer to are never deleted (API keys are revoked, assets deactivated).
CREATE TRIGGER accounts_no_delete BEFORE DELETE ON accounts
    FOR EACH ROW EXECUTE FUNCTION wallet_reject_change();
CREATE TRIGGER asset_types_no_delete BEFORE DELETE ON asset_types
    FOR EACH ROW EXECUTE FUNCTION wallet_reject_change();
CREATE TRIGGER api_keys_no_delete BEFORE DELETE ON api_keys
    FOR EACH ROW EXECUTE FUNCTION wallet_reject_change();
CREATE TRIGGER users_no_delete BEFORE DELETE ON users
    FOR EACH ROW EXECUTE FUNCTION wallet_reject_change();
CREATE TRIGGER accounts_no_truncate BEFORE TRUNCATE ON accounts
    FOR EACH STATEMENT EXECUTE FUNCTION wallet_reject_change();
CREATE TRIGGER asset_types_no_truncate BEFORE TRUNCATE ON asset_types
    FOR EACH STATEMENT EXECUTE FUNCTION wallet_reject_change();
CREATE TRIGGER api_keys_no_truncate BEFORE TRUNCATE ON api_keys
    FOR EACH STATEMENT EXECUTE FUNCTION wallet_reject_change();
CREATE TRIGGER users_no_truncate BEFORE TRUNCATE ON users
    FOR EACH STATEMENT EXECUTE FUNCTION wallet_reject_change();

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

-- Once per INSERT statement on ledger_entries, over all its rows: each transaction's entries are
-- numbered 1..n with n >= 2 (so none can be appended to it by a later statement), they sum to
-- zero, each names an existing account of the transaction's asset, one of them is the account of
-- the transaction's user (so the user exists), and the caller exists. Statement-level: one query
-- per posting, not one per row.
CREATE FUNCTION wallet_ledger_entries_check() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_problem text;
BEGIN
    SELECT CASE
               WHEN NOT s.transaction_ok THEN
                   format('transaction %s does not exist or refers to an unknown API key', s.transaction_id)
               WHEN s.entry_count < 2 OR s.first_no <> 1 OR s.last_no <> s.entry_count THEN
                   format('transaction %s must get its entries 1..n (n >= 2) in one statement; got %s entries numbered %s..%s',
                          s.transaction_id, s.entry_count, s.first_no, s.last_no)
               WHEN NOT s.accounts_ok THEN
                   format('an entry of transaction %s names an unknown account or another asset', s.transaction_id)
               WHEN NOT s.user_ok THEN
                   format('no entry of transaction %s is on its user''s account', s.transaction_id)
               ELSE format('ledger entries of transaction %s do not sum to zero (sum %s)', s.transaction_id, s.total)
           END
      INTO v_problem
      FROM (SELECT n.transaction_id,
                   bool_and(t.id IS NOT NULL AND k.id IS NOT NULL) AS transaction_ok,
                   count(*) AS entry_count, min(n.entry_no) AS first_no, max(n.entry_no) AS last_no,
                   bool_and(a.id IS NOT NULL AND a.asset_code = n.asset_code AND t.asset_code = n.asset_code)
                       AS accounts_ok,
                   coalesce(bool_or(a.user_id = t.user_id), false) AS user_ok,
                   sum(n.amount_minor) AS total
              FROM new_entries n
              LEFT JOIN transactions t ON t.id = n.transaction_id
              LEFT JOIN api_keys k ON k.id = t.api_key_id
              LEFT JOIN accounts a ON a.id = n.account_id
             GROUP BY n.transaction_id) s
     WHERE NOT s.transaction_ok OR s.entry_count < 2 OR s.first_no <> 1
        OR s.last_no <> s.entry_count OR NOT s.accounts_ok OR NOT s.user_ok OR s.total <> 0
     LIMIT 1;
    IF v_problem IS NOT NULL THEN
        RAISE EXCEPTION '%', v_problem USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER ledger_entries_balanced AFTER INSERT ON ledger_entries
    REFERENCING NEW TABLE AS new_entries
    FOR EACH STATEMENT EXECUTE FUNCTION wallet_ledger_entries_check();

-- Once per INSERT statement on transactions: every new transaction got its entries in that same
-- statement. With the entries check above this means a transaction and all its entries are
-- written by one SQL statement (data-modifying CTEs) and nothing can be added to it afterwards;
-- its asset is checked through its entries' accounts.
CREATE FUNCTION wallet_transactions_check() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_incomplete uuid;
BEGIN
    SELECT n.id INTO v_incomplete
      FROM new_transactions n
      LEFT JOIN ledger_entries e ON e.transaction_id = n.id AND e.entry_no = 2
     WHERE e.transaction_id IS NULL
     LIMIT 1;
    IF v_incomplete IS NOT NULL THEN
        RAISE EXCEPTION 'transaction % must be written together with its ledger entries (at least 2)',
            v_incomplete USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER transactions_complete AFTER INSERT ON transactions
    REFERENCING NEW TABLE AS new_transactions
    FOR EACH STATEMENT EXECUTE FUNCTION wallet_transactions_check();

-------------------------------------------------------------------------------------------------
-- Reference data. Used by `wallet seed`, seed.sql and the HTTP API alike, so all give one state.
-------------------------------------------------------------------------------------------------

-- The system accounts every asset has, one per purpose, so purchased, granted and spent credits
-- are told apart in the books.
CREATE FUNCTION wallet_system_codes() RETURNS text[] LANGUAGE sql IMMUTABLE AS $$
    SELECT ARRAY['SYSTEM_TREASURY', 'SYSTEM_PROMOTIONS', 'SYSTEM_REVENUE']
$$;

-- Which system account is the other side of each transaction type.
CREATE FUNCTION wallet_system_account_for(p_type text) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE p_type WHEN 'topup' THEN 'SYSTEM_TREASURY'
                       WHEN 'bonus' THEN 'SYSTEM_PROMOTIONS'
                       WHEN 'spend' THEN 'SYSTEM_REVENUE' END
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
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object('error', jsonb_build_object('code', p_code, 'message', p_message, 'field', p_field))
$$;

-- The public JSON of a transaction and of a ledger entry. The write response, a replay,
-- GET /transactions/{id} and the history are all built by these two functions, so they are the
-- same document. Plain SQL expressions, so PostgreSQL inlines them (STABLE, as jsonb_build_object
-- and to_char are; an IMMUTABLE label would stop the inlining): the posting functions build
-- the response from values they already hold, without querying the rows back.
CREATE FUNCTION wallet_entry_document(p_account_id bigint, p_account text, p_account_kind text,
                                      p_amount_minor bigint) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object('account_id', p_account_id, 'account', p_account,
                              'account_kind', p_account_kind, 'amount', p_amount_minor)
$$;

CREATE FUNCTION wallet_transaction_document(
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

-- Stored transactions as a JSON array, in the order of the ids given.
-- PL/pgSQL rather than SQL: PostgreSQL re-plans a non-inlined SQL function on every call;
-- PL/pgSQL caches the plan.
CREATE FUNCTION wallet_transactions_json(p_transaction_ids uuid[]) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (
        SELECT coalesce(jsonb_agg(wallet_transaction_document(
            t.id, t.type, t.status, t.user_id, t.asset_code, t.amount_minor, t.balance_after_minor,
            t.description, t.metadata, t.idempotency_key, t.created_at,
            (SELECT jsonb_agg(wallet_entry_document(e.account_id, coalesce(a.user_id, a.system_code),
                                                    a.kind, e.amount_minor) ORDER BY e.entry_no)
             FROM ledger_entries e JOIN accounts a ON a.id = e.account_id
             WHERE e.transaction_id = t.id)
        ) ORDER BY ids.n), '[]'::jsonb)
        FROM unnest(p_transaction_ids) WITH ORDINALITY AS ids(id, n)
        JOIN transactions t ON t.id = ids.id);
END $$;

CREATE FUNCTION wallet_transaction_json(p_transaction_id uuid) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN wallet_transactions_json(ARRAY[p_transaction_id]) -> 0;
END $$;

-- Serialises requests that share (caller, key) and answers a repeat from the stored outcome.
-- Returns NULLs when the key is new: the caller then does the work and stores the outcome with
-- wallet_store_outcome in the same database transaction. Otherwise returns the answer to give:
-- the stored outcome (a replay), 422 if the stored request differs, or 409 if another request
-- holding the key outlasts lock_timeout.
-- The lock is a transaction-scoped advisory lock: it lives in memory, not in a table, so claiming
-- it writes nothing; a second request with the key waits on it until the first commits, then
-- finds its stored outcome. (The primary key on idempotency_keys remains the final guard.)
CREATE FUNCTION wallet_idempotency_lookup(
    p_api_key_id bigint, p_idempotency_key text, p_fingerprint bytea,
    OUT status_code integer, OUT body jsonb, OUT replayed boolean)
LANGUAGE plpgsql AS $$
DECLARE
    v_stored record;
BEGIN
    replayed := false;
    BEGIN
        PERFORM pg_advisory_xact_lock(hashtextextended(p_idempotency_key, p_api_key_id));
    EXCEPTION WHEN lock_not_available THEN
        status_code := 409;
        body := wallet_error_body('idempotency_key_in_use',
            'another request with this idempotency key is still being processed; retry later',
            'idempotency_key');
        RETURN;
    END;
    SELECT k.request_sha256, k.status_code, k.response_body INTO v_stored
        FROM idempotency_keys k WHERE k.api_key_id = p_api_key_id AND k.key = p_idempotency_key;
    IF NOT FOUND THEN
        RETURN;
    END IF;
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
-- idempotency lock, then user account rows, always in this order):
--   1. resolve the user's and the system account (no lock); unknown user or asset -> 404, nothing
--      written, nothing stored;
--   2. take the key's lock; a stored outcome for it is replayed;
--   3. the user's cached balance is updated under its row lock only if it stays covered;
--      a short balance -> 409, stored;
--   4. in one statement, update the balance and write the transaction and its two entries
--      (the system account row is never locked);
--   5. store the response under the key.
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
    v_system_code text := wallet_system_account_for(p_type);
    v_delta_minor bigint;
    v_outcome record;
    v_transaction_id uuid;
    v_balance_after_minor bigint;
    v_created_at timestamptz;
BEGIN
    replayed := false;
    IF p_amount_minor IS NULL OR p_amount_minor <= 0 OR v_system_code IS NULL THEN
        RAISE EXCEPTION 'invalid posting: type %, amount %', p_type, p_amount_minor
            USING ERRCODE = 'check_violation';
    END IF;
    v_delta_minor := CASE p_type WHEN 'spend' THEN -p_amount_minor ELSE p_amount_minor END;
    p_metadata := coalesce(p_metadata, '{}'::jsonb);
    -- The fingerprint is computed here, from the parsed values, so that every caller (HTTP,
    -- `wallet seed`, seed.sql) agrees on what "the same request" is.
    v_fingerprint := sha256(convert_to(jsonb_build_object(
        'type', p_type, 'user_id', p_user_id, 'asset_type', p_asset_code,
        'amount', p_amount_minor, 'description', p_description, 'metadata', p_metadata)::text, 'UTF8'));

    SELECT u.id, s.id INTO v_user_account_id, v_system_account_id
        FROM accounts u
        JOIN asset_types t ON t.code = u.asset_code AND t.is_active
        JOIN accounts s ON s.system_code = v_system_code AND s.asset_code = u.asset_code
        WHERE u.user_id = p_user_id AND u.asset_code = p_asset_code;
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

    v_outcome := wallet_idempotency_lookup(p_api_key_id, p_idempotency_key, v_fingerprint);
    IF v_outcome.status_code IS NOT NULL THEN
        status_code := v_outcome.status_code;
        body := v_outcome.body;
        replayed := v_outcome.replayed;
        RETURN;
    END IF;

    -- One statement: the balance update (the row lock), the transaction and both entries.
    WITH account AS (
        UPDATE accounts SET balance_minor = balance_minor + v_delta_minor
        WHERE id = v_user_account_id AND balance_minor - held_minor + v_delta_minor >= 0
        RETURNING balance_minor
    ), posted AS (
        INSERT INTO transactions (type, api_key_id, idempotency_key, user_id, asset_code, amount_minor,
                                  balance_after_minor, description, metadata)
        SELECT p_type, p_api_key_id, p_idempotency_key, p_user_id, p_asset_code, p_amount_minor,
               account.balance_minor, p_description, p_metadata
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
    IF v_transaction_id IS NULL THEN
        status_code := 409;
        body := wallet_error_body('insufficient_funds',
            format('available balance of %s %s is less than %s', p_user_id, p_asset_code, p_amount_minor),
            'amount');
    ELSE
        status_code := 201;
        body := wallet_transaction_document(
            v_transaction_id, p_type, 'posted', p_user_id, p_asset_code, p_amount_minor,
            v_balance_after_minor, p_description, p_metadata, p_idempotency_key, v_created_at,
            jsonb_build_array(
                wallet_entry_document(v_user_account_id, p_user_id, 'user', v_delta_minor),
                wallet_entry_document(v_system_account_id, v_system_code, 'system', -v_delta_minor)));
    END IF;
    INSERT INTO idempotency_keys (api_key_id, key, request_sha256, status_code, response_body)
        VALUES (p_api_key_id, p_idempotency_key, v_fingerprint, status_code, body);
END $$;

-- The operations of a batch as rows, numbered from 0 in the caller's order; delta is the signed
-- change to the user's account.
CREATE FUNCTION wallet_batch_operations(p_operations jsonb)
RETURNS TABLE (ord integer, type text, user_id text, asset_type text, amount bigint,
               description text, metadata jsonb, delta bigint)
LANGUAGE sql IMMUTABLE AS $$
    SELECT (e.n - 1)::integer, e.op ->> 'type', e.op ->> 'user_id', e.op ->> 'asset_type',
           (e.op ->> 'amount')::bigint, e.op ->> 'description', coalesce(e.op -> 'metadata', '{}'::jsonb),
           CASE e.op ->> 'type' WHEN 'spend' THEN -(e.op ->> 'amount')::bigint
                                ELSE (e.op ->> 'amount')::bigint END
    FROM jsonb_array_elements(p_operations) WITH ORDINALITY AS e(op, n)
$$;

-- Posts up to WALLET_MAX_BATCH_OPERATIONS operations atomically: all of them or none.
-- p_operations is a JSON array of {type, user_id, asset_type, amount, description, metadata}.
-- Lock order: the idempotency lock, then every user account involved, in ascending account id,
-- in one statement. Two batches touching the same users in opposite orders therefore lock them
-- in the same order and cannot deadlock. Balances are computed in memory under those locks, and
-- all transactions, all entries and all balance updates are written by one statement each.
CREATE FUNCTION wallet_post_batch(
    p_api_key_id bigint, p_idempotency_key text, p_operations jsonb,
    OUT status_code integer, OUT body jsonb, OUT replayed boolean)
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
                  WHERE o.amount IS NULL OR o.amount <= 0 OR wallet_system_account_for(o.type) IS NULL) THEN
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

    v_outcome := wallet_idempotency_lookup(p_api_key_id, p_idempotency_key, v_fingerprint);
    IF v_outcome.status_code IS NOT NULL THEN
        status_code := v_outcome.status_code;
        body := v_outcome.body;
        replayed := v_outcome.replayed;
        RETURN;
    END IF;

    PERFORM 1 FROM accounts
        WHERE id IN (SELECT a.id FROM wallet_batch_operations(p_operations) AS o
                     JOIN accounts a ON a.user_id = o.user_id AND a.asset_code = o.asset_type)
        ORDER BY id FOR UPDATE;

    -- Under the locks, in one pass: every operation's accounts, the user's balance right after it
    -- (a running sum per account, in the caller's order) and the first one that would overdraw.
    SELECT array_agg(gen_random_uuid() ORDER BY r.ord), array_agg(r.account_id ORDER BY r.ord),
           array_agg(r.system_account_id ORDER BY r.ord), array_agg(r.system_code ORDER BY r.ord),
           array_agg(r.balance_after ORDER BY r.ord), min(r.ord) FILTER (WHERE r.balance_after < r.held_minor)
      INTO v_ids, v_user_account_ids, v_system_account_ids, v_system_codes, v_balances_after, v_first_short
      FROM (SELECT o.ord, a.id AS account_id, a.held_minor, s.id AS system_account_id, s.system_code,
                   a.balance_minor + sum(o.delta) OVER (PARTITION BY a.id ORDER BY o.ord) AS balance_after
              FROM wallet_batch_operations(p_operations) AS o
              JOIN accounts a ON a.user_id = o.user_id AND a.asset_code = o.asset_type
              JOIN accounts s ON s.system_code = wallet_system_account_for(o.type) AND s.asset_code = o.asset_type
           ) AS r;
    IF v_first_short IS NOT NULL THEN
        status_code := 409;
        body := wallet_error_body('insufficient_funds',
            format('operation %s: available balance is less than %s', v_first_short,
                   (p_operations -> v_first_short ->> 'amount')),
            format('operations[%s].amount', v_first_short));
        INSERT INTO idempotency_keys (api_key_id, key, request_sha256, status_code, response_body)
            VALUES (p_api_key_id, p_idempotency_key, v_fingerprint, status_code, body);
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
           ) ORDER BY o.ord))
      INTO body
      FROM posted p JOIN wallet_batch_operations(p_operations) AS o ON p.id = v_ids[o.ord + 1];

    status_code := 201;
    INSERT INTO idempotency_keys (api_key_id, key, request_sha256, status_code, response_body)
        VALUES (p_api_key_id, p_idempotency_key, v_fingerprint, status_code, body);
END $$;
