-- Fewer WAL bytes per posting, continued (issue 18 item 2; docs/PERFORMANCE.md has the bytes).
-- Rows written by every posting lose what another row already holds, and one index no plan needs
-- goes. Every row written before keeps what it has: readers take the missing value from the
-- transaction (coalesce(row's, transaction's)), so every answer about an old row is unchanged.

-- Ledger entries: an entry's asset is its transaction's (the entries' check has always required
-- it), and its time is its transaction's (the same statement, a clock reading microseconds
-- later). The posting core writes neither from now on (NULL: the transaction's); an entry that
-- names an asset must still name its transaction's (wallet_ledger_entries_check). 24 bytes of
-- the 64 of each entry's row, two entries a posting. The hash chain hashes the entry as stored
-- (wallet_chain_digest of its asset_code, NULL for new entries), and the transaction's asset is
-- in the same digest: nothing is left unhashed, and the links of older entries do not change.
ALTER TABLE ledger_entries ALTER COLUMN asset_code DROP NOT NULL;
ALTER TABLE ledger_entries ALTER COLUMN created_at DROP NOT NULL;
ALTER TABLE ledger_entries ALTER COLUMN created_at DROP DEFAULT;

-- Lot movements: no surrogate key. A movement is found by its transaction and lot
-- (lot_movements_once_per_transaction, unique) or by its lot (lot_movements_by_lot), never by
-- its id, whose index was 64 bytes of WAL a movement and its sequence a few more. What the id
-- also gave, the order in which a transaction moved its lots (the documents list them in that
-- order), a new movement gets from movement_no, its place among its transaction's movements
-- (1, 2, ...; 2 bytes where the id took 8); a movement written before keeps its id, and readers
-- order a transaction's movements by coalesce(movement_no, id): all of them are of one kind,
-- written by the one statement that posted it. The time of a movement is its transaction's;
-- only the opening lots of migration 0009, which have no transaction, keep one of their own.
ALTER TABLE lot_movements DROP CONSTRAINT lot_movements_pkey;
ALTER TABLE lot_movements ALTER COLUMN id DROP IDENTITY;
ALTER TABLE lot_movements ALTER COLUMN id DROP NOT NULL;
ALTER TABLE lot_movements ADD COLUMN movement_no smallint;
ALTER TABLE lot_movements ADD CONSTRAINT lot_movements_ordered
    CHECK ((id IS NULL) = (movement_no IS NOT NULL) AND movement_no >= 1);
ALTER TABLE lot_movements ALTER COLUMN created_at DROP NOT NULL;
ALTER TABLE lot_movements ALTER COLUMN created_at DROP DEFAULT;
ALTER TABLE lot_movements ADD CONSTRAINT lot_movements_dated
    CHECK (transaction_id IS NOT NULL OR created_at IS NOT NULL);

-- Idempotency records: the record of a posted write is as old as its transaction, stored in the
-- same database transaction; it keeps no time of its own (`wallet prune-idempotency` reads the
-- transaction's). Every other record keeps one.
ALTER TABLE idempotency_keys ALTER COLUMN created_at DROP NOT NULL;
ALTER TABLE idempotency_keys ADD CONSTRAINT idempotency_keys_dated
    CHECK (created_at IS NOT NULL OR transaction_id IS NOT NULL);

-- Indexes a posting writes and a plan can do without:
--  * transactions (user_id, asset_code, created_at, seq): a balance as of an instant and the
--    bounds of a history window are found by bisection over seq on (user_id, asset_code, seq
--    DESC), which a posting writes anyway (wallet_account_seq_at: postings of one account are
--    stamped under its row lock, so their times follow their seq). 93 bytes of WAL a posting and
--    the splits of an index whose every user inserts in the middle.
--  * idempotency_keys (created_at), a BRIN index since 0012, read only by `wallet prune-idempotency`:
--    a record written into a block range already summarized widens that range's summary, a WAL
--    record of 72 bytes per record; once pruning has freed pages, every new record lands in such
--    a range (and leaves its summary spanning from the oldest record to now, which the next prune
--    must scan anyway); and a posted write's record has no time of its own now. The prune reads
--    the table instead (docs/PERFORMANCE.md has the plans).
DROP INDEX transactions_user_asset_time;
DROP INDEX idempotency_keys_by_age;
