-- A transaction's event references its transaction by id, written by the posting core (issue 18:
-- WAL and database CPU per write; docs/PERFORMANCE.md has the bytes).
--
-- Since 0013's time a `transaction.posted` event has carried only {"id": "<uuid>"} in its payload
-- (54 bytes of jsonb), written by a statement trigger on transactions (transactions_events: a
-- transition table and a PL/pgSQL call per posting statement). From now on the core, wallet_post,
-- writes the event itself, in the statement that inserts the transactions (db/sql/functions/
-- 40_posting.sql), with the transaction's id in a column of its own (16 bytes, no jsonb); the feed
-- renders the same document from the transaction (wallet_event_payload). Rows written before keep
-- their payload as stored and are served as before.

ALTER TABLE events ADD COLUMN transaction_id uuid;
ALTER TABLE events ALTER COLUMN payload DROP NOT NULL;
-- An event carries either its document (a payload, an object: the check of 0007 still holds) or,
-- for a posted transaction only, its transaction's id; never both, never neither. Every row written
-- before has a payload and no transaction_id, so the check holds for them as they are.
ALTER TABLE events ADD CONSTRAINT events_payload_or_transaction_id
    CHECK ((payload IS NULL) <> (transaction_id IS NULL)
           AND (transaction_id IS NULL OR type = 'transaction.posted'));

DROP TRIGGER transactions_events ON transactions;
DROP FUNCTION wallet_events_from_transactions();

-- The per-statement check of new transactions (0003's, same checks, same messages, in the same
-- order) gains one: each new transaction has its event, written by this database transaction
-- (the posting core writes both in one statement, so the event is there when this statement
-- trigger fires). What the dropped trigger guaranteed by writing the event, this guarantees by
-- refusing a transaction without one: a transaction cannot be committed that the feed would never
-- announce (whatever inserted it, and during an upgrade too: a posting function of an older
-- revision, still installed between this migration and the re-installation of the live functions,
-- is refused rather than posting silently).
--
-- Its cost is one range scan of the events primary key over this database transaction's own
-- events (txid = pg_current_xact_id(): one event for a single write), never over anyone else's:
-- no index on transaction_id is needed (one would add its own WAL to every posting). EXCEPT is a
-- set operation over both sides once (hashed or sorted), whatever the number of transactions.
-- The scan must stay on the index: the service's connections plan once and keep the plan
-- (plan_cache_mode = force_generic_plan), and a generic plan made without statistics on events
-- (a young database) estimated every event for `txid = $1` and chose a sequential scan of the
-- whole table, kept for every later posting of that connection (measured: the CPU of a single
-- write grew by a quarter over 5,000 writes). Hence enable_seqscan = off for this function (its other queries are probes by
-- key, and the transition table is no sequential scan), and jit = off with it (the
-- planner's cost of 10^10 for a disabled scan would otherwise pass the JIT thresholds).
CREATE OR REPLACE FUNCTION wallet_transactions_check() RETURNS trigger LANGUAGE plpgsql
SET enable_seqscan = off SET jit = off AS $$
DECLARE
    v_incomplete uuid;
    v_bad_reversal uuid;
    v_txid xid8 := pg_current_xact_id();
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
    SELECT x.id INTO v_incomplete
      FROM (SELECT n.id FROM new_transactions n
            EXCEPT
            SELECT e.transaction_id FROM events e WHERE e.txid = v_txid AND e.transaction_id IS NOT NULL) AS x
     LIMIT 1;
    IF v_incomplete IS NOT NULL THEN
        RAISE EXCEPTION 'transaction % must be written together with its event (transaction.posted)',
            v_incomplete USING ERRCODE = 'check_violation';
    END IF;
    IF EXISTS (SELECT 1 FROM new_transactions WHERE reverses IS NOT NULL OR hold_id IS NOT NULL) THEN
        SELECT n.id INTO v_bad_reversal
          FROM new_transactions n
          LEFT JOIN transactions o ON o.id = n.reverses
          LEFT JOIN holds h ON h.id = n.hold_id
         WHERE (n.reverses IS NOT NULL
                AND (o.id IS NULL OR o.user_id <> n.user_id OR o.asset_code <> n.asset_code
                     OR wallet_rule_reversed_by(o.type) IS DISTINCT FROM n.type))
            OR (n.hold_id IS NOT NULL
                AND (h.id IS NULL OR h.user_id <> n.user_id OR h.asset_code <> n.asset_code
                     OR n.amount_minor > h.amount_minor))
         LIMIT 1;
        IF v_bad_reversal IS NOT NULL THEN
            RAISE EXCEPTION 'transaction % reverses or captures something it cannot', v_bad_reversal
                USING ERRCODE = 'check_violation';
        END IF;
        INSERT INTO reversal_totals AS r (transaction_id, original_amount_minor, reversed_amount_minor)
            SELECT n.reverses, o.amount_minor, sum(n.amount_minor)
              FROM new_transactions n JOIN transactions o ON o.id = n.reverses
             GROUP BY n.reverses, o.amount_minor
        ON CONFLICT (transaction_id) DO UPDATE
            SET reversed_amount_minor = r.reversed_amount_minor + EXCLUDED.reversed_amount_minor;
    END IF;
    RETURN NULL;
END $$;
