-- Change events (a transactional outbox) and webhook endpoints.
--
-- Every posted transaction and every change of a hold writes an event row in the same database
-- transaction, by statement-level triggers: the posting functions are unchanged, and whatever
-- writes a transaction or a hold (an HTTP request, a group commit, a batch, the hold sweeper,
-- psql) writes its events too, or nothing at all.
--
-- Consumers read events in (txid, seq) order and only those whose writing transaction is older than
-- every transaction of this database still running (wallet_event_horizon(), a function re-installed
-- with the others: db/sql/functions/70_events.sql). A sequence alone is not enough: numbers are
-- taken in one order and committed in another, so a reader that saw 8 could later find a 7
-- committed behind its cursor. A transaction that can still commit an event has a txid at or
-- above that horizon, and every transaction that starts later gets a larger txid, so nothing can
-- ever appear before a position a reader has passed.

CREATE TABLE events (
    -- Insertion order within a database transaction, and the event's public id.
    seq        bigint GENERATED ALWAYS AS IDENTITY,
    -- The writing transaction (64-bit, never wraps).
    txid       xid8 NOT NULL DEFAULT pg_current_xact_id(),
    type       text NOT NULL CHECK (type IN ('transaction.posted', 'hold.placed', 'hold.captured',
                                             'hold.voided', 'hold.expired')),
    payload    jsonb NOT NULL CHECK (jsonb_typeof(payload) = 'object'),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (txid, seq)
);

-- Events are history: only `wallet_prune_events` (retention) may delete them, oldest first.
CREATE FUNCTION wallet_events_guard_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF coalesce(current_setting('wallet.pruning_events', true), '') <> 'on' THEN
        RAISE EXCEPTION 'events are append-only: % is not allowed (retention: wallet_prune_events)', TG_OP
            USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER events_append_only BEFORE UPDATE ON events
    FOR EACH ROW EXECUTE FUNCTION wallet_reject_change();
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION wallet_reject_change();
CREATE TRIGGER events_delete_only_by_retention BEFORE DELETE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION wallet_events_guard_delete();

-- What a `transaction.posted` event carries: the transaction's public document as posted,
-- without its entries (GET /transactions/{id} has them) and without `reversed_amount` (which
-- changes later). Built from the row alone: no lookup on the posting path.
CREATE FUNCTION wallet_transaction_event_payload(t transactions) RETURNS jsonb
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
        'reverses', t.reverses,
        'counterparty_user_id', t.counterparty_user_id,
        'counterparty_balance_after', t.counterparty_balance_after_minor,
        'fee', t.fee_minor,
        'hold_id', t.hold_id)
$$;

-- One INSERT ... SELECT per posting statement, whatever number of transactions it wrote.
CREATE FUNCTION wallet_events_from_transactions() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO events (type, payload)
    SELECT 'transaction.posted', wallet_transaction_event_payload(n) FROM new_transactions n ORDER BY n.seq;
    RETURN NULL;
END $$;
-- Named so that it fires after transactions_complete (statement triggers fire in name order).
CREATE TRIGGER transactions_events AFTER INSERT ON transactions
    REFERENCING NEW TABLE AS new_transactions
    FOR EACH STATEMENT EXECUTE FUNCTION wallet_events_from_transactions();

-- Holds: placed (insert), then captured, voided or expired (the one update a hold may get, see
-- wallet_holds_guard_update). The payload is the hold's public document after the change.
CREATE FUNCTION wallet_events_from_new_holds() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO events (type, payload)
    SELECT 'hold.placed', wallet_hold_document(n) FROM new_holds n ORDER BY n.seq;
    RETURN NULL;
END $$;
CREATE TRIGGER holds_events_placed AFTER INSERT ON holds
    REFERENCING NEW TABLE AS new_holds
    FOR EACH STATEMENT EXECUTE FUNCTION wallet_events_from_new_holds();

CREATE FUNCTION wallet_events_from_changed_holds() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO events (type, payload)
    SELECT 'hold.' || n.status, wallet_hold_document(n) FROM changed_holds n
     WHERE n.status IN ('captured', 'voided', 'expired')
     ORDER BY n.seq;
    RETURN NULL;
END $$;
CREATE TRIGGER holds_events_changed AFTER UPDATE ON holds
    REFERENCING NEW TABLE AS changed_holds
    FOR EACH STATEMENT EXECUTE FUNCTION wallet_events_from_changed_holds();

-- Webhook endpoints, each with its own delivery position in the event feed (cursor_txid,
-- cursor_seq: the last event delivered or passed over) and the state of its current attempt.
-- A deliverer takes a session advisory lock on the endpoint (see wallet.services.webhooks), so
-- one endpoint is delivered by one process at a time, in feed order.
CREATE TABLE webhook_endpoints (
    id               integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    url              text NOT NULL CHECK (url ~ '^https?://' AND length(url) <= 2048),
    secret           text NOT NULL CHECK (length(secret) BETWEEN 32 AND 200),
    -- NULL: every type.
    event_types      text[] CHECK (cardinality(event_types) > 0),
    description      text CHECK (length(description) <= 500),
    active           boolean NOT NULL DEFAULT true,
    created_at       timestamptz NOT NULL DEFAULT now(),
    cursor_txid      xid8 NOT NULL,
    cursor_seq       bigint NOT NULL,
    -- Failed attempts at the event after the cursor; reset when it is delivered or dead-lettered.
    attempts         integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    last_attempt_at  timestamptz,
    last_success_at  timestamptz,
    last_error       text CHECK (length(last_error) <= 1000),
    delivered_count  bigint NOT NULL DEFAULT 0
);

-- Events an endpoint gave up on after WALLET_WEBHOOK_MAX_ATTEMPTS, with the exact body sent (so
-- a redelivery sends the same bytes, even after the event itself was pruned). status: 'dead',
-- 'redeliver' (asked for, the deliverer will try once more), 'redelivered'.
CREATE TABLE webhook_dead_letters (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    endpoint_id     integer NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    event_id        bigint NOT NULL,
    event_type      text NOT NULL,
    body            text NOT NULL,
    attempts        integer NOT NULL CHECK (attempts >= 1),
    last_error      text NOT NULL CHECK (length(last_error) <= 1000),
    status          text NOT NULL DEFAULT 'dead' CHECK (status IN ('dead', 'redeliver', 'redelivered')),
    dead_at         timestamptz NOT NULL DEFAULT now(),
    redelivered_at  timestamptz,
    CONSTRAINT dead_letter_redelivered_at CHECK ((status = 'redelivered') = (redelivered_at IS NOT NULL))
);
CREATE INDEX webhook_dead_letters_by_endpoint ON webhook_dead_letters (endpoint_id, id DESC);
CREATE INDEX webhook_dead_letters_to_redeliver ON webhook_dead_letters (endpoint_id, id)
    WHERE status = 'redeliver';
