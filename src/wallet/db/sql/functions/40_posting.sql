-- Re-installed by every `wallet migrate` (after the versioned migrations); see wallet.db.migrate.
-- Posting.

-- A new transaction's id: a UUID of version 7 (RFC 9562), the milliseconds since the epoch
-- first, then 74 random bits. Ids made one after the other sort one after the other, so the
-- indexes that start with a transaction's id (transactions, ledger_entries, lot_movements) grow at
-- their right edge, as the seq indexes do: an insert touches the same few pages as the one
-- before, where a random id touched a page anywhere in the index (a full-page image in the WAL
-- after every checkpoint, a split in the middle of the index, pages left two thirds full).
-- docs/PERFORMANCE.md has the bytes. An SQL expression, inlined.
CREATE OR REPLACE FUNCTION wallet_new_transaction_id() RETURNS uuid
LANGUAGE sql VOLATILE AS $$
    SELECT encode(set_bit(set_bit(overlay(uuid_send(gen_random_uuid())
                                          PLACING substring(int8send((extract(epoch FROM clock_timestamp()) * 1000)::bigint)
                                                            FROM 3)
                                          FROM 1 FOR 6), 52, 1), 53, 1), 'hex')::uuid
$$;

-- The posting core: the one writer of `transactions` and `ledger_entries`. Every kind of
-- posting (single writes, group commit, batches, transfers, reversals, captures, expiries) is a
-- row of wallet_posting (migration 0011) built by its own thin function; this posts any number of
-- them, in array order:
--   1. every user account of every leg is locked, in ascending id (callers may hold some already:
--      their idempotency key first, then accounts in ascending id, then holds: the lock order of
--      every write);
--   2. unless p_expire_due is false (an expiry, or a capture that expired what it keeps), the
--      due lots of the accounts the postings debit are expired first, each in an expiry posting
--      of its own (wallet_expire_lots); an account the postings only credit, or one with open
--      holds that they credit, expires them in one expiry posted just before the postings, only
--      if they go through (a transfer its sender cannot pay leaves the receiver as it was), and
--      there its holds rest on the credits: its due credits go as far as the credits replace them;
--   3. each posting's debits are checked against the running balances (what p.covered_by says
--      they must leave; expired holds still counted in held_minor are released once per account
--      when that alone makes one short);
--   4. one INSERT writes every transaction, one every entry, each user entry with its hash-chain
--      link (the triggers then check the entries and fill and draw the lots), one each
--      transaction's event, one UPDATE every balance; the same statement builds each posting's
--      document from the rows it inserted.
-- Steps 1 and 3 take one of three roads, the same answers by each (docs/PERFORMANCE.md):
--   * one user account (every posting's first leg; the other legs on system accounts; none
--     uncovered): one UPDATE locks it and applies every posting, when its balance covers the
--     running balances of all of them and it has no due lot. No lock record, no second update.
--   * otherwise one statement locks the accounts and reads them, and, when none has a due lot,
--     one window query runs every posting against the running balances; if none is short, done.
--   * otherwise (due lots, a short posting): the posting-by-posting pass below, which expires,
--     releases expired holds and refuses.
-- p_all_or_none: a short posting refuses them all (a batch) and nothing is written; otherwise
-- (a group) each short posting is refused alone and the rest go through.
-- Returns one row per posting: its transaction (NULL when refused) and, when p_documents, its
-- document as posted (the document wallet_transactions_document renders from the stored rows,
-- as a replay does, byte for byte); for a refused one, the account found short.
CREATE OR REPLACE FUNCTION wallet_post(p_postings wallet_posting[], p_all_or_none boolean,
                                       p_expire_due boolean DEFAULT true, p_documents boolean DEFAULT true)
RETURNS TABLE (ord integer, transaction_id uuid, document jsonb, short_account_id bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_n integer := cardinality(p_postings);
    v_postings wallet_posting[] := p_postings;
    v_accounts bigint[];      -- the user accounts of the legs, ascending
    v_balances bigint[];      -- per account: its running balance
    v_held bigint[];          -- per account: its running held amount
    v_start_balances bigint[];
    v_start_held bigint[];
    v_released boolean[];     -- per account: expired holds released already
    v_ids uuid[];             -- per posting: its transaction, if it goes through
    v_balances_after bigint[];
    v_counterparty_after bigint[];
    v_negative boolean[];     -- per posting: an admin debt left below the holds
    v_short bigint[];         -- per posting: the account found short
    v_documents jsonb[];      -- per posting: its document, lots aside
    v_resting wallet_posting[] := '{}';
    v_now timestamptz;
    v_row record;
    v_p wallet_posting;
    v_k integer;
    v_ok boolean;
    v_try integer;
    v_new bigint;
    v_first_short integer;
    v_due boolean;            -- some account has a lot past its expiry
    v_single bigint;          -- the one user account of every posting (the first road)
    v_passed boolean := false;
    v_uncovered boolean := false;
    v_setting text;
    v_head_nos bigint[];      -- per account: the number of its chain's head (NULL: none yet)
    v_head_links bytea[];     -- per account: that head's link
BEGIN
    -- The postings' shape, and whether the first road may take them.
    SELECT CASE WHEN bool_and(coalesce(cardinality(p.account_ids) >= 2
                                       AND cardinality(p.account_ids) = cardinality(p.amounts_minor)
                                       AND p.covered_by IN ('available', 'balance', 'nothing') AND p.amount_minor > 0,
                                       false))
                THEN coalesce(bool_or(p.covered_by = 'nothing'), false) END,
           CASE WHEN count(DISTINCT p.account_ids[1]) = 1 AND bool_and(p.counterparty_user_id IS NULL)
                THEN min(p.account_ids[1]) END
      INTO v_uncovered, v_single
      FROM unnest(p_postings) AS p;
    IF v_n IS NULL OR v_n < 1 OR v_uncovered IS NULL THEN
        RAISE EXCEPTION 'invalid postings: each needs a positive amount, two or more legs and a known cover'
            USING ERRCODE = 'check_violation';
    END IF;

    -- The first road: one user account, locked by the update that applies every posting. Each
    -- debit must leave what its cover says, at its place in the running balance: the balance
    -- (and the balance less held) must be at least the deepest point the postings take it to.
    IF v_single IS NOT NULL AND NOT v_uncovered THEN
        WITH run AS (
            SELECT p.ordinality AS i, p.id, p.amounts_minor[1] AS amount, p.covered_by,
                   coalesce(p.held_change_minor, 0) AS held_change,
                   (sum(p.amounts_minor[1]) OVER w)::bigint AS balance,
                   (sum(coalesce(p.held_change_minor, 0)) OVER w)::bigint AS held
              FROM unnest(p_postings) WITH ORDINALITY AS p
            WINDOW w AS (ORDER BY p.ordinality)
        ), need AS (
            SELECT sum(r.amount)::bigint AS net, sum(r.held_change)::bigint AS held_net,
                   max(-r.balance) FILTER (WHERE r.amount < 0) AS balance,
                   max(r.held - r.balance) FILTER (WHERE r.amount < 0 AND r.covered_by = 'available') AS available
              FROM run r
        ), account AS (
            UPDATE accounts a SET balance_minor = a.balance_minor + n.net, held_minor = a.held_minor + n.held_net
              FROM need n
             WHERE a.id = v_single AND a.kind = 'user'
               AND NOT (p_expire_due AND coalesce(a.lots_expire_at <= clock_timestamp(), false))
               AND (n.balance IS NULL OR a.balance_minor >= n.balance)
               AND (n.available IS NULL OR a.balance_minor - a.held_minor >= n.available)
               AND NOT EXISTS (SELECT 1 FROM unnest(p_postings) AS p, unnest(p.account_ids[2:]) AS o(id)
                                 JOIN accounts x ON x.id = o.id WHERE x.kind = 'user')
            RETURNING a.balance_minor AS balance, a.held_minor AS held, n.net
        )
        SELECT ARRAY[a.balance], ARRAY[a.held], array_agg(a.balance - a.net + r.balance ORDER BY r.i),
               array_agg(coalesce(r.id, wallet_new_transaction_id()) ORDER BY r.i)
          INTO v_balances, v_held, v_balances_after, v_ids
          FROM account a, run r
         GROUP BY a.balance, a.held;
        IF v_ids IS NOT NULL THEN
            v_passed := true;
            v_accounts := ARRAY[v_single];
            v_start_balances := v_balances;  -- written already
            v_start_held := v_held;
            v_counterparty_after := array_fill(NULL::bigint, ARRAY[v_n]);
            v_negative := array_fill(false, ARRAY[v_n]);
            v_short := v_counterparty_after;
        END IF;
    END IF;

    IF NOT v_passed THEN
        -- 1. The user accounts, locked in ascending id, read in the same statement (the lock is
        --    taken before the row is read: the values are the committed ones after any wait).
        SELECT array_agg(l.id ORDER BY l.id), array_agg(l.balance_minor ORDER BY l.id),
               array_agg(l.held_minor ORDER BY l.id), coalesce(bool_or(l.lots_expire_at <= clock_timestamp()), false)
          INTO v_accounts, v_balances, v_held, v_due
          FROM (SELECT a.id, a.balance_minor, a.held_minor, a.lots_expire_at FROM accounts a
                 WHERE a.id = ANY (ARRAY(SELECT DISTINCT l.id FROM unnest(p_postings) AS p, unnest(p.account_ids) AS l(id)))
                   AND a.kind = 'user'
                 ORDER BY a.id FOR UPDATE) AS l;
        v_due := p_expire_due AND v_due;
        v_start_balances := v_balances;
        v_start_held := v_held;
    END IF;

    -- The second road: no due lot; every posting against the running balances of its accounts
    -- in one window query; if none is short, they all go through as the pass below would take them.
    IF NOT v_passed AND NOT v_due THEN
        WITH leg AS (
            SELECT p.ordinality AS i, l.j, p.id, p.covered_by, coalesce(p.allow_negative, false) AS allow_negative,
                   p.counterparty_user_id IS NOT NULL AS transfer, l.amount, k.k,
                   v_balances[k.k] + sum(l.amount) OVER w AS balance,
                   v_held[k.k] + sum(CASE WHEN l.j = 1 THEN coalesce(p.held_change_minor, 0) ELSE 0 END) OVER w AS held,
                   row_number() OVER (PARTITION BY k.k ORDER BY p.ordinality DESC, l.j DESC) AS back
              FROM unnest(p_postings) WITH ORDINALITY AS p
             CROSS JOIN LATERAL unnest(p.account_ids, p.amounts_minor) WITH ORDINALITY AS l(account_id, amount, j)
             CROSS JOIN LATERAL (SELECT array_position(v_accounts, l.account_id) AS k) AS k
            WINDOW w AS (PARTITION BY k.k ORDER BY p.ordinality, l.j)
        ), posting AS (
            SELECT x.*, lead(x.balance) OVER (PARTITION BY x.i ORDER BY x.j) AS second FROM leg x
        )
        SELECT NOT coalesce(bool_or(x.k IS NOT NULL AND x.amount < 0 AND x.covered_by <> 'nothing'
                                    AND (x.balance < 0 OR (x.covered_by = 'available' AND x.balance - x.held < 0))),
                            false) AS passed,
               array_agg(x.balance::bigint ORDER BY x.i) FILTER (WHERE x.j = 1) AS balances_after,
               array_agg(CASE WHEN x.transfer THEN x.second::bigint END ORDER BY x.i) FILTER (WHERE x.j = 1)
                   AS counterparty_after,
               array_agg(x.allow_negative AND x.balance < x.held ORDER BY x.i) FILTER (WHERE x.j = 1) AS negative,
               array_agg(coalesce(x.id, wallet_new_transaction_id()) ORDER BY x.i) FILTER (WHERE x.j = 1) AS ids,
               -- every account has a leg: its last running figures are its new ones
               array_agg(x.balance::bigint ORDER BY x.k) FILTER (WHERE x.back = 1 AND x.k IS NOT NULL) AS balances,
               array_agg(x.held::bigint ORDER BY x.k) FILTER (WHERE x.back = 1 AND x.k IS NOT NULL) AS held
          INTO v_row
          FROM posting x;
        IF v_row.passed THEN
            v_passed := true;
            v_balances_after := v_row.balances_after;
            v_counterparty_after := v_row.counterparty_after;
            v_negative := v_row.negative;
            v_ids := v_row.ids;
            v_balances := coalesce(v_row.balances, '{}');
            v_held := coalesce(v_row.held, '{}');
            v_short := array_fill(NULL::bigint, ARRAY[v_n]);
        END IF;
    END IF;

    IF NOT v_passed THEN
        -- 2. Due lots (only when an account has some: most postings skip this step).
        IF v_due THEN
            v_now := clock_timestamp();
            FOR v_row IN
                SELECT a.id, a.held_minor, c.credits, c.debited
                  FROM (SELECT l.id, sum(greatest(l.amount, 0))::bigint AS credits, bool_or(l.amount < 0) AS debited
                          FROM unnest(p_postings) AS p, unnest(p.account_ids, p.amounts_minor) AS l(id, amount)
                         GROUP BY l.id) AS c
                 CROSS JOIN LATERAL (SELECT x.id, x.held_minor FROM accounts x
                                      WHERE x.id = c.id AND x.kind = 'user'
                                       AND coalesce(x.lots_expire_at <= v_now, false) LIMIT 1) AS a  -- by its key (see 55)
                 ORDER BY a.id
            LOOP
                IF v_row.debited AND (v_row.credits = 0 OR v_row.held_minor = 0) THEN
                    PERFORM wallet_expire_lots(v_row.id);
                ELSE
                    v_p := wallet_resting_expiry(v_row.id, v_row.credits);
                    IF v_p.amount_minor > 0 THEN
                        v_resting := v_resting || v_p;
                    END IF;
                END IF;
            END LOOP;
            IF cardinality(v_resting) > 0 THEN
                v_postings := v_resting || v_postings;
                v_uncovered := true;
            END IF;
            -- Read again: expiries and released holds changed them.
            SELECT array_agg(a.id ORDER BY a.id), array_agg(a.balance_minor ORDER BY a.id),
                   array_agg(a.held_minor ORDER BY a.id)
              INTO v_accounts, v_balances, v_held
              FROM accounts a
             WHERE a.id = ANY (v_accounts);
            v_start_balances := v_balances;
            v_start_held := v_held;
        END IF;
        v_released := array_fill(false, ARRAY[cardinality(v_accounts)]);
        v_ids := array_fill(NULL::uuid, ARRAY[cardinality(v_postings)]);
        v_balances_after := array_fill(NULL::bigint, ARRAY[cardinality(v_postings)]);
        v_counterparty_after := v_balances_after;
        v_negative := array_fill(false, ARRAY[cardinality(v_postings)]);
        v_short := v_balances_after;

        -- 3. The running balances, posting by posting.
        FOR i IN 1..cardinality(v_postings) LOOP
            v_p := v_postings[i];
            FOR v_try IN 1..2 LOOP
                v_ok := true;
                FOR j IN 1..cardinality(v_p.account_ids) LOOP
                    v_k := array_position(v_accounts, v_p.account_ids[j]);
                    CONTINUE WHEN v_k IS NULL OR v_p.amounts_minor[j] >= 0 OR v_p.covered_by = 'nothing';
                    v_new := v_balances[v_k] + v_p.amounts_minor[j];
                    IF v_new < 0 OR (v_p.covered_by = 'available' AND v_new - v_held[v_k]
                                     - CASE WHEN j = 1 THEN coalesce(v_p.held_change_minor, 0) ELSE 0 END < 0) THEN
                        v_ok := false;
                        v_short[i] := v_accounts[v_k];
                        EXIT;
                    END IF;
                END LOOP;
                EXIT WHEN v_ok;
                v_k := array_position(v_accounts, v_short[i]);
                EXIT WHEN v_held[v_k] = 0 OR v_released[v_k];
                -- Expired holds may still be counted in held_minor: release them (under the lock).
                PERFORM wallet_release_expired_holds(v_accounts[v_k]);
                v_held[v_k] := v_held[v_k] - (v_start_held[v_k] - (SELECT a.held_minor FROM accounts a WHERE a.id = v_accounts[v_k]));
                v_start_held[v_k] := (SELECT a.held_minor FROM accounts a WHERE a.id = v_accounts[v_k]);
                v_released[v_k] := true;
                v_short[i] := NULL;
            END LOOP;
            IF NOT v_ok THEN
                CONTINUE WHEN NOT p_all_or_none;
                v_first_short := i;
                EXIT;
            END IF;
            FOR j IN 1..cardinality(v_p.account_ids) LOOP
                v_k := array_position(v_accounts, v_p.account_ids[j]);
                CONTINUE WHEN v_k IS NULL;
                v_balances[v_k] := v_balances[v_k] + v_p.amounts_minor[j];
                IF j = 1 THEN
                    v_held[v_k] := v_held[v_k] + coalesce(v_p.held_change_minor, 0);
                    v_balances_after[i] := v_balances[v_k];
                    v_negative[i] := coalesce(v_p.allow_negative, false) AND v_balances[v_k] < v_held[v_k];
                ELSIF j = 2 AND v_p.counterparty_user_id IS NOT NULL THEN
                    v_counterparty_after[i] := v_balances[v_k];
                END IF;
            END LOOP;
            v_ids[i] := coalesce(v_p.id, wallet_new_transaction_id());
        END LOOP;

        IF v_first_short IS NOT NULL THEN
            RETURN QUERY SELECT (w.i - cardinality(v_resting))::integer, NULL::uuid, NULL::jsonb,
                                CASE WHEN w.i = v_first_short THEN v_short[w.i] END
                           FROM generate_series(cardinality(v_resting) + 1, cardinality(v_postings)) AS w(i);
            RETURN;
        END IF;
    END IF;

    -- 4. The writes: every transaction, every entry, every balance; and each document, from the
    --    rows as inserted (the lots, which the entries' trigger moves, are added below, as
--    wallet_transaction_lots reads them).
    IF v_uncovered THEN
        v_setting := current_setting('wallet.allow_negative', true);
        PERFORM set_config('wallet.allow_negative', 'on', true);  -- this transaction only
    END IF;
    -- The heads the new links continue from: read now, after every lock and every expiry this
    -- call posted (those chained on the same accounts).
    SELECT array_agg(h.chain_no ORDER BY h.k), array_agg(h.link_sha256 ORDER BY h.k) INTO v_head_nos, v_head_links
      FROM wallet_chain_heads(v_accounts) WITH ORDINALITY AS h(chain_no, link_sha256, k);
    WITH posted AS (
        INSERT INTO transactions (id, type, api_key_id, idempotency_key, user_id, asset_code, amount_minor,
                                  balance_after_minor, description, metadata, reverses, counterparty_user_id,
                                  counterparty_balance_after_minor, fee_minor, hold_id, allow_negative, request_id,
                                  credit_expires_at)
        SELECT v_ids[p.ordinality], p.type, p.api_key_id, p.idempotency_key, p.user_id, p.asset_code, p.amount_minor,
               v_balances_after[p.ordinality], p.description, coalesce(p.metadata, '{}'::jsonb), p.reverses,
               p.counterparty_user_id, v_counterparty_after[p.ordinality], coalesce(p.fee_minor, 0), p.hold_id,
               v_negative[p.ordinality], p.request_id,
               coalesce(p.credit_expires_at, clock_timestamp() + make_interval(secs => p.credit_expires_in_seconds))
          FROM unnest(v_postings) WITH ORDINALITY AS p
         WHERE v_ids[p.ordinality] IS NOT NULL
         ORDER BY p.ordinality
        RETURNING *
    ), entries AS (
        -- (no asset nor time: the transaction's; migration 0013.) Each entry on a user account
        -- (one of v_accounts, every one locked in step 1) carries its hash-chain link (migration
        -- 0015): link = wallet_chain_link(previous link, wallet_chain_digest(its transaction as
        -- inserted above, the entry as inserted here)), numbered on from the account's head
        -- (v_head_nos / v_head_links, read under the lock: a posting on the account before it
        -- has committed, the next one waits). Several entries of the statement on one
        -- account are folded in posting order, then entry number (the postings' order is their
        -- transactions' seq order too: posted inserts them in it; the trigger before 0015 folded
        -- by seq). System entries are not chained. Each posted row finds its posting by its id's
        -- place in v_ids (a search of a uuid array: no join the planner could turn into a scan
        -- per row).
        INSERT INTO ledger_entries (transaction_id, entry_no, account_id, amount_minor, chain_no, link_sha256)
        SELECT x.transaction_id, x.entry_no, x.account_id, x.amount_minor,
               CASE WHEN x.digest IS NOT NULL THEN coalesce(x.head_no, 0) + row_number() OVER w END,
               wallet_chain_fold(x.head_link, x.digest) FILTER (WHERE x.digest IS NOT NULL) OVER w
          FROM (SELECT i.i, t.id AS transaction_id, l.entry_no::smallint AS entry_no, l.account_id, l.amount_minor,
                       v_head_nos[u.k] AS head_no, v_head_links[u.k] AS head_link,
                       CASE WHEN u.k IS NOT NULL
                            THEN wallet_chain_digest(t::transactions, l.entry_no::smallint, l.account_id, NULL,
                                                     l.amount_minor) END AS digest
                  FROM posted t
                 CROSS JOIN LATERAL (SELECT array_position(v_ids, t.id) AS i) AS i
                 CROSS JOIN LATERAL unnest(v_postings[i.i].account_ids, v_postings[i.i].amounts_minor)
                                    WITH ORDINALITY AS l(account_id, amount_minor, entry_no)
                 CROSS JOIN LATERAL (SELECT array_position(v_accounts, l.account_id) AS k) AS u) AS x
        WINDOW w AS (PARTITION BY x.account_id ORDER BY x.i, x.entry_no ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
         ORDER BY x.i, x.entry_no
        RETURNING transaction_id, entry_no, account_id, amount_minor
    ), balances AS (
        -- Found by = ANY (an index scan whatever the planner guesses of the set's size).
        UPDATE accounts a SET balance_minor = v_balances[array_position(v_accounts, a.id)],
                              held_minor = v_held[array_position(v_accounts, a.id)]
         WHERE a.id = ANY (ARRAY(SELECT v_accounts[w.k] FROM generate_series(1, cardinality(v_accounts)) AS w(k)
                                  WHERE v_balances[w.k] <> v_start_balances[w.k] OR v_held[w.k] <> v_start_held[w.k]))
        RETURNING 1
    ), posted_events AS (
        -- Each transaction's event, in seq order (the feed's order within this database
        -- transaction), referencing it by id (migration 0017).
        INSERT INTO events (type, transaction_id)
        SELECT 'transaction.posted', t.id FROM posted t ORDER BY t.seq
    ), legs AS (
        SELECT e.transaction_id,
               jsonb_agg(wallet_entry_document(e.account_id, coalesce(a.user_id, a.system_code), a.kind, e.amount_minor)
                         ORDER BY e.entry_no) AS entries
          FROM entries e
         CROSS JOIN LATERAL (SELECT x.user_id, x.system_code, x.kind FROM accounts x WHERE x.id = e.account_id LIMIT 1) AS a
         WHERE p_documents
         GROUP BY e.transaction_id
    )
    SELECT (SELECT count(*) FROM balances),
           (SELECT array_agg(d.document ORDER BY w.i)
              FROM generate_series(1, cardinality(v_postings)) AS w(i)
              LEFT JOIN (SELECT t.id, wallet_transaction_document(
                                    t.id, t.type, t.status, t.user_id, t.asset_code, t.amount_minor,
                                    t.balance_after_minor, t.description, t.metadata, t.idempotency_key, t.created_at,
                                    l.entries)
                                || wallet_transaction_extras(t.reverses, 0, t.counterparty_user_id,
                                                             t.counterparty_balance_after_minor, t.fee_minor, t.hold_id)
                                   AS document
                           FROM posted t JOIN legs l ON l.transaction_id = t.id) AS d ON d.id = v_ids[w.i])
      INTO v_try, v_documents;
    IF v_uncovered THEN
        PERFORM set_config('wallet.allow_negative', coalesce(v_setting, ''), true);
    END IF;

    RETURN QUERY
        SELECT (w.i - cardinality(v_resting))::integer, v_ids[w.i],
               CASE WHEN v_ids[w.i] IS NOT NULL AND p_documents
                    THEN v_documents[w.i] || jsonb_build_object('lots', (
                             SELECT coalesce(jsonb_agg(wallet_lot_movement_document(m, l) ORDER BY coalesce(m.movement_no, m.id)), '[]'::jsonb)
                               FROM lot_movements m JOIN credit_lots l ON l.id = m.lot_id
                              WHERE m.transaction_id = v_ids[w.i])) END,
               v_short[w.i]
          FROM generate_series(cardinality(v_resting) + 1, cardinality(v_postings)) AS w(i)
         ORDER BY w.i;
END $$;
-- Since migration 0017 wallet_post writes the events of the transactions it posts; the trigger that
-- wrote them goes in this script, so in the same database transaction as the core above (a posting
-- meanwhile gets its event from one or the other, never none nor two).
DROP TRIGGER IF EXISTS transactions_events ON transactions;
DROP FUNCTION IF EXISTS wallet_events_from_transactions();

-- The expiry of p_amount_minor of the due credits of the (locked) account p_account, as of p_now,
-- as a posting: user -, SYSTEM_BREAKAGE +, by the system's expiry key, covered by nothing (it
-- takes credits that are gone already; more than the balance less held only when credits posted
-- with it cover the holds again, see wallet_post).
CREATE OR REPLACE FUNCTION wallet_expiry_posting(p_account accounts, p_amount_minor bigint, p_now timestamptz)
RETURNS wallet_posting
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_posting wallet_posting;
BEGIN
    SELECT 'expiry', k.api_key_id, 'expiry:' || gen_random_uuid(), p_account.user_id, p_account.asset_code,
           p_amount_minor, 'credits expired unspent',
           jsonb_build_object('expired_as_of', to_char(p_now AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')),
           ARRAY[p_account.id, s.id], ARRAY[-p_amount_minor, p_amount_minor]
      INTO STRICT v_posting.type, v_posting.api_key_id, v_posting.idempotency_key, v_posting.user_id,
           v_posting.asset_code, v_posting.amount_minor, v_posting.description, v_posting.metadata,
           v_posting.account_ids, v_posting.amounts_minor
      FROM system_api_keys k, accounts s
     WHERE k.purpose = 'expiry' AND s.system_code = wallet_rule_system_account('expiry')
       AND s.asset_code = p_account.asset_code;
    v_posting.covered_by := 'nothing';
    RETURN v_posting;
END $$;

-- Posts that expiry on its own (wallet_expire_lots_for).
CREATE OR REPLACE FUNCTION wallet_post_expiry(p_account accounts, p_amount_minor bigint, p_now timestamptz)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM wallet_post(ARRAY[wallet_expiry_posting(p_account, p_amount_minor, p_now)], true, false, false);
END $$;

-- The expiry of a (locked) account's due credits that holds rest on credits of p_incoming_minor
-- posted with it: what is due, as far as its balance plus those credits less its holds lets go
-- (its expired holds released first), as a posting (wallet_expiry_posting); amount_minor 0:
-- nothing goes. wallet_expire_lots_for's amount, posted by wallet_post with the credits.
CREATE OR REPLACE FUNCTION wallet_resting_expiry(p_account_id bigint, p_incoming_minor bigint) RETURNS wallet_posting
LANGUAGE plpgsql AS $$
DECLARE
    v_account accounts;
    v_now timestamptz := clock_timestamp();
    v_due bigint;
    v_amount bigint;
    v_none wallet_posting;
BEGIN
    SELECT * INTO v_account FROM accounts WHERE id = p_account_id;
    IF v_account.held_minor > 0 AND wallet_release_expired_holds(p_account_id) > 0 THEN
        SELECT * INTO v_account FROM accounts WHERE id = p_account_id;
    END IF;
    SELECT coalesce(sum(l.remaining_minor), 0) INTO v_due
      FROM credit_lots l WHERE l.account_id = p_account_id AND l.remaining_minor > 0 AND l.expires_at <= v_now;
    v_amount := least(v_due, greatest(v_account.balance_minor + p_incoming_minor - v_account.held_minor, 0));
    IF v_amount <= 0 THEN
        v_none.amount_minor := 0;
        RETURN v_none;
    END IF;
    RETURN wallet_expiry_posting(v_account, v_amount, v_now);
END $$;

-- Posts a top-up, bonus or spend for one user, idempotently: the key's lock and stored outcome
-- first (a replay does not depend on today's reference data), then the user's and the system
-- account (unknown user or asset -> `user_not_found` / `asset_type_not_found`, nothing stored),
-- then one posting of two legs through wallet_post (the row lock, due lots, the cover check, the
-- writes), and the outcome stored under the key.
CREATE OR REPLACE FUNCTION wallet_post_transaction(
    p_api_key_id bigint, p_idempotency_key text, p_type text, p_user_id text, p_asset_code text,
    p_amount_minor bigint, p_description text, p_metadata jsonb, p_request_id text DEFAULT NULL,
    p_expires_at timestamptz DEFAULT NULL, p_expires_in_seconds integer DEFAULT NULL,
    OUT outcome text, OUT body jsonb, OUT replayed boolean)
LANGUAGE plpgsql AS $$
DECLARE
    v_fingerprint bytea;
    v_posting wallet_posting;
    v_delta_minor bigint;
    v_posted record;
BEGIN
    replayed := false;
    IF p_amount_minor IS NULL OR p_amount_minor <= 0 OR NOT coalesce(wallet_rule_direct(p_type), false) THEN
        RAISE EXCEPTION 'invalid posting: type %, amount %', p_type, p_amount_minor
            USING ERRCODE = 'check_violation';
    END IF;
    IF (p_expires_at IS NOT NULL OR p_expires_in_seconds IS NOT NULL)
       AND (wallet_rule_lot_origin(p_type) IS DISTINCT FROM 'granted' OR p_expires_in_seconds <= 0
            OR (p_expires_at IS NOT NULL AND p_expires_in_seconds IS NOT NULL)) THEN
        RAISE EXCEPTION 'invalid posting: only a bonus expires, by expires_at or expires_in_seconds'
            USING ERRCODE = 'check_violation';
    END IF;
    v_delta_minor := wallet_rule_user_sign(p_type) * p_amount_minor;
    p_metadata := coalesce(p_metadata, '{}'::jsonb);
    -- The fingerprint is computed here, from the parsed values, so that every caller (HTTP,
    -- `wallet seed`, seed.sql) agrees on what "the same request" is.
    v_fingerprint := wallet_posting_fingerprint(p_type, p_user_id, p_asset_code, p_amount_minor,
                                                p_description, p_metadata, p_expires_at, p_expires_in_seconds);

    SELECT l.outcome, l.body, l.replayed INTO outcome, body, replayed
        FROM wallet_idempotency_lookup(p_api_key_id, p_idempotency_key, v_fingerprint) AS l;
    IF outcome IS NOT NULL THEN
        RETURN;
    END IF;

    SELECT ARRAY[u.id, s.id] INTO v_posting.account_ids
        FROM accounts u
        JOIN asset_types t ON t.code = u.asset_code AND t.is_active
        JOIN accounts s ON s.system_code = wallet_rule_system_account(p_type) AND s.asset_code = u.asset_code
        WHERE u.user_id = p_user_id AND u.asset_code = p_asset_code;
    IF NOT FOUND THEN
        SELECT m.outcome, m.body INTO outcome, body FROM wallet_missing_account(p_user_id, p_asset_code, 'user_id', 'asset_type') m;
        RETURN;
    END IF;
    -- A bonus's own expires_at, judged now (after the key: a retry is answered from what was
    -- stored). Not stored when refused: the caller corrects it and retries with the same key.
    -- expires_in_seconds counts from the moment the credit is written.
    IF p_expires_at <= clock_timestamp() + interval '1 second' THEN
        outcome := 'validation_error';
        body := wallet_error_body(outcome, 'expires_at must be at least one second in the future', 'expires_at');
        RETURN;
    END IF;

    v_posting.type := p_type;
    v_posting.api_key_id := p_api_key_id;
    v_posting.idempotency_key := p_idempotency_key;
    v_posting.request_id := p_request_id;
    v_posting.user_id := p_user_id;
    v_posting.asset_code := p_asset_code;
    v_posting.amount_minor := p_amount_minor;
    v_posting.description := p_description;
    v_posting.metadata := p_metadata;
    v_posting.credit_expires_at := p_expires_at;
    v_posting.credit_expires_in_seconds := p_expires_in_seconds;
    v_posting.amounts_minor := ARRAY[v_delta_minor, -v_delta_minor];
    v_posting.covered_by := 'available';
    SELECT p.transaction_id, p.document INTO v_posted FROM wallet_post(ARRAY[v_posting], true) AS p;
    IF v_posted.transaction_id IS NULL THEN
        outcome := 'insufficient_funds';
        body := wallet_insufficient_funds_body(p_user_id, p_asset_code, p_amount_minor);
    ELSE
        outcome := 'posted';
        body := v_posted.document;
    END IF;
    PERFORM wallet_idempotency_store_one(p_api_key_id, p_idempotency_key, v_fingerprint, outcome, body,
                                         v_posted.transaction_id);
END $$;
