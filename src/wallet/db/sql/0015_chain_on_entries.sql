-- The hash chain's links move onto the ledger entries they vouch for (issue 18: WAL per write).
-- Until now each entry on a user account had a row of its own in ledger_chain (migration 0006),
-- written by a statement trigger: 120 bytes of WAL for the row and 72 for its primary key per
-- single write, plus the trigger's statement. From here on the posting core computes each new
-- user entry's number and link in the statement that inserts the entry (wallet_post, step 4:
-- the same digest of the same transaction row and entry, folded in the same order, so every link
-- is byte for byte what the trigger would have written) and stores them in the entry's own row.
--
-- The links written before stay where they are: ledger_chain is append-only and its rows and
-- their WAL are history. An account's chain goes on numbering from its last ledger_chain link
-- (chain_no is continuous across the two stores); the view ledger_chain_links reads both.

-- NULL on system entries (never chained) and on entries written before this migration (their
-- link, if they have one, is in ledger_chain). A link is 32 bytes, numbered from 1, and comes
-- with its number or not at all. No table rewrite: the columns have no default.
ALTER TABLE ledger_entries
    ADD COLUMN chain_no bigint,
    ADD COLUMN link_sha256 bytea,
    ADD CONSTRAINT ledger_entries_link
        CHECK ((chain_no IS NULL) = (link_sha256 IS NULL) AND chain_no >= 1 AND length(link_sha256) = 32);

-- One link per number per account: two postings computing the same next number for an account
-- cannot both commit (ledger_chain's primary key did the same). It is also how an account's head
-- is found (wallet_chain_head) and how `wallet verify` and the live audit walk a chain.
CREATE UNIQUE INDEX ledger_entries_chain ON ledger_entries (account_id, chain_no) WHERE chain_no IS NOT NULL;

-- The posting core chains the entries it writes; the entries' check (wallet_ledger_entries_check,
-- re-installed by this migration) refuses an entry on a user account without a link, and one on
-- a system account with one.
DROP TRIGGER ledger_entries_chained ON ledger_entries;
DROP FUNCTION wallet_ledger_entries_chain();

-- Closed: no link is written to ledger_chain any more, so none can fork a chain across the two
-- stores. (Its rows stay append-only, as before.)
CREATE FUNCTION wallet_reject_closed_table() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is closed: % is not allowed (since migration 0015 the links are on ledger_entries)',
        TG_TABLE_NAME, TG_OP USING ERRCODE = 'restrict_violation';
END $$;
CREATE TRIGGER ledger_chain_closed BEFORE INSERT ON ledger_chain
    FOR EACH STATEMENT EXECUTE FUNCTION wallet_reject_closed_table();

-- Every link of every chain, wherever it is stored: the one place readers (`wallet verify`, the
-- live audit, the tests) read links from. Conditions on account_id and chain_no reach both
-- branches, each an index range (ledger_chain's primary key, ledger_entries_chain).
CREATE VIEW ledger_chain_links AS
SELECT c.account_id, c.chain_no, c.transaction_id, c.entry_no, c.link_sha256
  FROM ledger_chain c
UNION ALL
SELECT e.account_id, e.chain_no, e.transaction_id, e.entry_no, e.link_sha256
  FROM ledger_entries e
 WHERE e.chain_no IS NOT NULL;
