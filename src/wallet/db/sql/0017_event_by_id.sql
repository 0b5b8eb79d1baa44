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

-- The trigger that wrote the events, transactions_events, goes with the posting core that writes
-- them, in the same script and so the same database transaction (db/sql/functions/40_posting.sql,
-- re-installed by every `wallet migrate` after the migrations, each script committed on its own):
-- dropped here, a posting in between (a service still running during the upgrade) would go
-- through the core of before without any event; this way it gets its event from one or the other.
--
-- No check in the database that each new transaction has its event (the trigger guaranteed it by
-- writing it): the one check that could (wallet_transactions_check, already run once per
-- statement that inserts transactions) must look the event up in `events`, which measured 17-25
-- us per posting statement in every form tried (a set difference, a probe per transaction, with
-- or without a statement of its own), where the trigger it replaces cost 33 us: most of the CPU
-- this change saves. The posting core is the only writer of `transactions` and writes each one's
-- event in the same statement; tests/db/test_one_posting_path.py holds both, in the live files
-- and in the installed database.
