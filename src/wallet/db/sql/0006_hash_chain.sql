-- Tamper evidence: every ledger entry on a user account carries a SHA-256 link chained to the
-- previous one of the same account. An edit of a stored transaction or of a user's entry made
-- behind the triggers (a superuser with session_replication_role = replica, a doctored dump
-- restored, a hand-edited page) breaks the links of exactly that transaction (one per user
-- account it moves), which `wallet verify` names.
--
--   link(n) = sha256(link(n - 1) || wallet_chain_digest(transaction, entry))
--   link(0) = 32 zero bytes
--
-- One chain per user account, not one for the whole ledger: the chain of an account is extended
-- under that account's row lock, which every posting already holds when it writes its entries
-- (the balance UPDATE in the same statement, or SELECT ... FOR UPDATE before it), so chaining
-- adds no serialisation point. System accounts are not chained (no posting ever locks them).
-- Their entries are not hashed either: each is fully determined by its transaction, which is
-- (the system account its type uses, the amount that balances the user's entries), and
-- `wallet verify` checks exactly that, so an edit of one fails verify naming its transaction.

-- One row per ledger entry on a user account, numbered 1, 2, ... per account in posting order.
-- The primary key refuses a fork: two postings computing the same next number for an account
-- cannot both commit. Append-only like the ledger itself.
CREATE TABLE ledger_chain (
    account_id     bigint NOT NULL,
    chain_no       bigint NOT NULL CHECK (chain_no >= 1),
    transaction_id uuid NOT NULL,
    entry_no       smallint NOT NULL,
    link_sha256    bytea NOT NULL CHECK (length(link_sha256) = 32),
    PRIMARY KEY (account_id, chain_no)
);
CREATE TRIGGER ledger_chain_append_only BEFORE UPDATE OR DELETE ON ledger_chain
    FOR EACH ROW EXECUTE FUNCTION wallet_reject_change();
CREATE TRIGGER ledger_chain_no_truncate BEFORE TRUNCATE ON ledger_chain
    FOR EACH STATEMENT EXECUTE FUNCTION wallet_reject_change();

-- What a link vouches for: the immutable content of the transaction and of the chained entry,
-- named field by field, never the whole row: a column added to transactions later must not
-- change the digest of rows chained before it (a field to be covered from then on needs a new
-- version of this function, tagged 'wallet-chain-v2'). Not covered: status (a pending
-- transaction may still change it), seq (the chain itself orders the entries), the entry's
-- created_at (a clock reading of the same statement).
-- The encoding is JSON text: typed, delimited, NULL distinct from empty, independent of session
-- settings (times as integer microseconds since the epoch; no floats, no time zone), and
-- recomputable outside the database: elements separated by ", ", strings escaped and the
-- metadata printed as jsonb prints them. (json_build_array, not jsonb_build_array(...)::text:
-- the same text without building a jsonb first.)
CREATE FUNCTION wallet_chain_digest(t transactions, p_entry_no smallint, p_account_id bigint,
                                    p_asset_code text, p_amount_minor bigint) RETURNS bytea
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT sha256(convert_to(json_build_array(
        'wallet-chain-v1',
        t.id, t.type, t.user_id, t.asset_code, t.amount_minor, t.balance_after_minor,
        t.description, t.metadata, (extract(epoch FROM t.created_at) * 1000000)::bigint,
        t.api_key_id, t.idempotency_key, t.reverses, t.counterparty_user_id,
        t.counterparty_balance_after_minor, t.fee_minor, t.hold_id, t.allow_negative,
        p_entry_no, p_account_id, p_asset_code, p_amount_minor)::text, 'UTF8'))
$$;

-- One link from the previous one (NULL: the start of a chain).
CREATE FUNCTION wallet_chain_link(p_previous bytea, p_digest bytea) RETURNS bytea
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT sha256(coalesce(p_previous, '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea)
                  || p_digest)
$$;

-- Folds digests into links, as a window aggregate over one account's new entries in order:
-- wallet_chain_fold(head, digest) OVER (PARTITION BY account ORDER BY ...) is each entry's link,
-- starting from head (the account's newest link before this statement; NULL for a new chain).
CREATE FUNCTION wallet_chain_step(p_link bytea, p_head bytea, p_digest bytea) RETURNS bytea
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    RETURN wallet_chain_link(coalesce(p_link, p_head), p_digest);
END $$;
CREATE AGGREGATE wallet_chain_fold(bytea, bytea) (SFUNC = wallet_chain_step, STYPE = bytea);

-- Which accounts are system accounts, read once per chaining statement (a handful of rows).
CREATE INDEX accounts_system ON accounts (id) WHERE kind = 'system';

-- Once per INSERT statement on ledger_entries (after the entries check, trigger names fire in
-- alphabetical order): chains every new entry on a user account. The transactions written by
-- the same statement are visible here. Within the statement, entries are chained per account in
-- the order of their transaction's seq, then entry_no; each account's chain continues from its
-- head, read in this statement's snapshot, which is taken after the posting got the account's
-- row lock: a concurrent posting on the account has committed (and its link is visible) or has
-- not started writing. One INSERT for every row of the statement.
-- It runs for every posting and is planned once per session for a transition table of unknown
-- size (generic plans), so it is written to leave the planner no choice that could go wrong at
-- some size and to do little: the system accounts read once; per user entry, one primary-key
-- probe of its transaction (LIMIT 1 keeps it a probe: a join could be planned as a scan of the
-- whole transactions table per posting), the digest computed from that row, and one probe of
-- the account's head.
CREATE FUNCTION wallet_ledger_entries_chain() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO ledger_chain (account_id, chain_no, transaction_id, entry_no, link_sha256)
    SELECT x.account_id, coalesce((x.head).chain_no, 0) + row_number() OVER w, x.transaction_id, x.entry_no,
           wallet_chain_fold((x.head).link_sha256, x.digest) OVER w
      FROM (SELECT n.account_id, n.transaction_id, n.entry_no, d.seq, d.digest,
                   (SELECT c FROM ledger_chain c WHERE c.account_id = n.account_id
                     ORDER BY c.chain_no DESC LIMIT 1) AS head
              FROM new_entries n
             CROSS JOIN LATERAL (SELECT t.seq,
                                        wallet_chain_digest(t, n.entry_no, n.account_id, n.asset_code, n.amount_minor)
                                            AS digest
                                   FROM transactions t WHERE t.id = n.transaction_id LIMIT 1) AS d
             WHERE n.account_id <> ALL (ARRAY(SELECT a.id FROM accounts a WHERE a.kind = 'system'))
            OFFSET 0) AS x  -- (OFFSET 0: the head is fetched once per row, not once per use)
    WINDOW w AS (PARTITION BY x.account_id ORDER BY x.seq, x.entry_no
                 ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW);
    RETURN NULL;
END $$;
CREATE TRIGGER ledger_entries_chained AFTER INSERT ON ledger_entries
    REFERENCING NEW TABLE AS new_entries
    FOR EACH STATEMENT EXECUTE FUNCTION wallet_ledger_entries_chain();

-- The entries written before this migration, chained in posting order (seq is assigned under
-- the account's row lock, so per account it is the order in which postings were applied).
-- Concurrent postings wait: CREATE TRIGGER above holds a lock on ledger_entries that conflicts
-- with INSERT until this migration commits, so no entry is written unchained in between.
INSERT INTO ledger_chain (account_id, chain_no, transaction_id, entry_no, link_sha256)
SELECT e.account_id, row_number() OVER w, e.transaction_id, e.entry_no,
       wallet_chain_fold(NULL::bytea, wallet_chain_digest(t, e.entry_no, e.account_id, e.asset_code, e.amount_minor))
           OVER w
  FROM ledger_entries e
  JOIN accounts a ON a.id = e.account_id AND a.kind = 'user'
  JOIN transactions t ON t.id = e.transaction_id
WINDOW w AS (PARTITION BY e.account_id ORDER BY t.seq, e.entry_no ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW);
