-- Re-installed by every `wallet migrate` (after the versioned migrations); see wallet.db.migrate.
-- Also run by migration 0015 (which drops the chaining trigger in the same transaction), so what
-- is here must work on the schema of 0015.
-- The balanced-entries check of migration 0001 (trigger ledger_entries_balanced), with the same
-- checks and the same messages, planned so that its cost is per new entry, never per row of the
-- ledger.
--
-- Why: the service runs with plan_cache_mode = force_generic_plan, so the plan of this query is
-- made once per connection and kept. 0001 joined the transition table to `transactions` with
-- plain LEFT JOINs, and whenever that plan was made with a large transition table (a batch first
-- in the session) or with thin statistics (a young or never analyzed ledger), the planner chose a
-- sequential scan and sort of all of `transactions` (auto_explain: 3.6 ms for a single top-up at
-- 3,300 transactions, growing with the table), kept for every later posting of that connection.
-- Here each entry makes one primary-key probe of its transaction, its transaction's API key and
-- its account: LATERAL subqueries with LIMIT 1 are not pulled up into joins, so no statistics can
-- turn them into scans.
--
-- Once per INSERT statement on ledger_entries, over all its rows: each transaction's entries are
-- numbered 1..n with n >= 2 (so none can be appended to it by a later statement), they sum to
-- zero, each names an existing account of the transaction's asset (an entry's asset_code, when it
-- names one, must be that asset too; the posting core leaves it NULL: the transaction's, migration
-- 0013), one of them is the account of the transaction's user (so the user exists), the
-- caller exists, and (migration 0015) every entry on a user account carries its hash-chain link
-- and none on a system account does. That last check costs nothing more: the account of each
-- entry is read anyway. Which link is right is not checked here (the posting core computes it;
-- the unique index ledger_entries_chain refuses a fork; `wallet verify` and the live audit
-- recompute every link), only that none is missing: no entry on a user account escapes its chain.
CREATE OR REPLACE FUNCTION wallet_ledger_entries_check() RETURNS trigger LANGUAGE plpgsql AS $$
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
               WHEN s.total <> 0 THEN
                   format('ledger entries of transaction %s do not sum to zero (sum %s)', s.transaction_id, s.total)
               ELSE format('an entry of transaction %s on a user account has no hash-chain link,'
                           ' or one on a system account has one', s.transaction_id)
           END
      INTO v_problem
      FROM (SELECT n.transaction_id,
                   bool_and(t.id IS NOT NULL AND k.id IS NOT NULL) AS transaction_ok,
                   count(*) AS entry_count, min(n.entry_no) AS first_no, max(n.entry_no) AS last_no,
                   bool_and(a.id IS NOT NULL AND a.asset_code = coalesce(n.asset_code, t.asset_code)
                            AND t.asset_code = coalesce(n.asset_code, t.asset_code))
                       AS accounts_ok,
                   coalesce(bool_or(a.user_id = t.user_id), false) AS user_ok,
                   sum(n.amount_minor) AS total,
                   bool_and((n.chain_no IS NOT NULL) = (a.kind = 'user')) AS chained_ok
              FROM new_entries n
              LEFT JOIN LATERAL (SELECT t.id, t.api_key_id, t.user_id, t.asset_code
                                   FROM transactions t WHERE t.id = n.transaction_id LIMIT 1) AS t ON true
              LEFT JOIN LATERAL (SELECT k.id FROM api_keys k WHERE k.id = t.api_key_id LIMIT 1) AS k ON true
              LEFT JOIN LATERAL (SELECT a.id, a.user_id, a.asset_code, a.kind
                                   FROM accounts a WHERE a.id = n.account_id LIMIT 1) AS a ON true
             GROUP BY n.transaction_id) s
     WHERE NOT s.transaction_ok OR s.entry_count < 2 OR s.first_no <> 1
        OR s.last_no <> s.entry_count OR NOT s.accounts_ok OR NOT s.user_ok OR s.total <> 0
        OR NOT s.chained_ok
     LIMIT 1;
    IF v_problem IS NOT NULL THEN
        RAISE EXCEPTION '%', v_problem USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;
