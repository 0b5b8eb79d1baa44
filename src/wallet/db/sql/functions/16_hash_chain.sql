-- Re-installed by every `wallet migrate` (after the versioned migrations); see wallet.db.migrate.
-- Also run by migration 0015 (with 15_ledger_checks.sql), so what is here must work on the schema
-- of 0015: a function needing a table or column of a later migration goes in a file of its own.
--
-- The head of an account's hash chain: its newest link (number and value), the one a new entry
-- on the account continues from (wallet_post); no row: the account has no chain yet. Since
-- migration 0015 the links are on the entries (ledger_entries_chain, whose newest is the head
-- whenever there is one) and those of the entries before it in ledger_chain, read only for an
-- account with no link on its entries yet: one index probe for an account that posted since,
-- two otherwise (UNION ALL under LIMIT 1 stops at the first branch that has a row).
-- Declared as a set of at most one row, SQL, STABLE and not STRICT, so that the planner inlines
-- it where it is called in a FROM clause: the probes are part of the caller's plan.
CREATE OR REPLACE FUNCTION wallet_chain_head(p_account_id bigint)
RETURNS TABLE (chain_no bigint, link_sha256 bytea)
LANGUAGE sql STABLE ROWS 1 AS $$
    (SELECT e.chain_no, e.link_sha256 FROM ledger_entries e
      WHERE e.account_id = p_account_id AND e.chain_no IS NOT NULL
      ORDER BY e.chain_no DESC LIMIT 1)
    UNION ALL
    (SELECT c.chain_no, c.link_sha256 FROM ledger_chain c
      WHERE c.account_id = p_account_id
      ORDER BY c.chain_no DESC LIMIT 1)
    LIMIT 1
$$;

-- The heads of the accounts a posting call is about to chain on, in the order given (NULLs: no
-- chain yet): what wallet_post folds each account's new links from, read once per call, after
-- the accounts are locked and their due lots expired. PL/pgSQL with sequential scans off, so
-- that the probes stay probes whatever the statistics said when the session planned them: a
-- connection that planned the lookup while the ledger was empty (statistics of a fresh database,
-- no autovacuum to refresh them) kept a scan of every ledger entry per posting, 25 ms a write
-- after 30,000 postings. One call per posting call, not per entry.
CREATE OR REPLACE FUNCTION wallet_chain_heads(p_account_ids bigint[])
RETURNS TABLE (chain_no bigint, link_sha256 bytea)
LANGUAGE plpgsql STABLE
SET enable_seqscan = off SET jit = off AS $$
BEGIN
    RETURN QUERY
        SELECT h.chain_no, h.link_sha256
          FROM unnest(p_account_ids) WITH ORDINALITY AS a(id, k)
          LEFT JOIN LATERAL wallet_chain_head(a.id) AS h ON true
         ORDER BY a.k;
END $$;
