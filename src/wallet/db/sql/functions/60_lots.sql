-- Re-installed by every `wallet migrate` (after the versioned migrations); see wallet.db.migrate.
-- Credit lots (migration 0009): filled by credits, drawn by debits, expired into breakage.
--
-- Everything here runs under the user account's row lock, which every posting takes before it
-- writes its entries: lots of one account change one posting at a time.

-- How many lot movements the transaction has (migration 0013: a new movement is numbered after
-- them, in the order its transaction moved its lots).
-- PL/pgSQL, not SQL: a SQL function with a FROM is not inlined, and PostgreSQL parses and plans
-- its body again for every statement that calls it (33 µs an INSERT, against 11: PL/pgSQL keeps
-- the plan for the session). Every fill and draw calls it.
CREATE OR REPLACE FUNCTION wallet_lot_movements_of(p_transaction_id uuid) RETURNS smallint
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (SELECT count(*)::smallint FROM lot_movements m WHERE m.transaction_id = p_transaction_id);
END $$;

-- Adds p_amount_minor to the account's lot of that origin and expiry (creating it if new), as a
-- movement of p_transaction_id. An update first, an insert only for a new lot (under the
-- account's row lock no other writer can add it meanwhile): INSERT ... ON CONFLICT DO UPDATE
-- locks the row it updates, a WAL record more per credit (docs/PERFORMANCE.md). Each fill takes
-- one value of the lots' id sequence either way, as that insert did, so lots get the ids they
-- got before.
CREATE OR REPLACE FUNCTION wallet_lot_fill(p_account_id bigint, p_transaction_id uuid, p_origin text,
                                           p_expires_at timestamptz, p_amount_minor bigint) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_lot bigint;
BEGIN
    UPDATE credit_lots l SET remaining_minor = l.remaining_minor + p_amount_minor
     WHERE l.account_id = p_account_id AND l.origin = p_origin
       AND (l.expires_at = p_expires_at OR (p_expires_at IS NULL AND l.expires_at IS NULL))
    RETURNING l.id INTO v_lot;
    IF v_lot IS NOT NULL THEN
        PERFORM nextval(pg_get_serial_sequence('credit_lots', 'id'));
    ELSE
        INSERT INTO credit_lots (account_id, origin, expires_at, remaining_minor)
            VALUES (p_account_id, p_origin, p_expires_at, p_amount_minor)
            RETURNING id INTO v_lot;
    END IF;
    INSERT INTO lot_movements (transaction_id, lot_id, amount_minor, movement_no)
        VALUES (p_transaction_id, v_lot, p_amount_minor, wallet_lot_movements_of(p_transaction_id) + 1);
END $$;

-- A credit of p_amount_minor to the account that takes the origins of other lots (a top-up or
-- bonus fills its own lot: see the trigger below). The part that repays a debt (balance below
-- zero before it) fills no lot. A refund restores the lots its original drew, last drawn first,
-- after what earlier refunds of it restored; a transfer passes on the sender's lots in the order
-- they were drawn (the fee is the tail of the draw). Whatever has no lot to mirror (a spend from
-- before lots) is purchased.
-- A refund never fills a lot that has expired (the user could not use it, and the next expiry
-- would count it as breakage a second time): what its original drew from one comes back usable,
-- in a lot of the same origin that expires as a credit of that origin given now would (the
-- asset's default expiry for the origin, counted from now; none without one).
CREATE OR REPLACE FUNCTION wallet_lots_credit(
    p_account_id bigint, p_transaction_id uuid, p_type text, p_reverses uuid,
    p_amount_minor bigint, p_balance_after_minor bigint)
RETURNS boolean  -- whether it filled a lot that expires
LANGUAGE plpgsql AS $$
DECLARE
    v_left bigint := least(p_amount_minor, greatest(p_balance_after_minor, 0));
    v_now timestamptz := clock_timestamp();
    v_skip bigint := 0;
    v_take bigint;
    v_expires_at timestamptz;
    v_at integer;
    -- The lots to fill, (origin, expiry) each once, in the order first met: two expired lots may
    -- come back in one renewed lot, which a movement names once.
    v_origins text[] := '{}';
    v_expires timestamptz[] := '{}';
    v_amounts bigint[] := '{}';
    d record;
BEGIN
    IF v_left <= 0 THEN
        RETURN false;
    END IF;
    IF p_type = 'refund' THEN
        SELECT coalesce(sum(m.amount_minor), 0) INTO v_skip
          FROM transactions r JOIN lot_movements m ON m.transaction_id = r.id
         WHERE r.reverses = p_reverses AND r.id <> p_transaction_id AND m.amount_minor > 0;
    END IF;
    FOR d IN
        SELECT coalesce(m.movement_no, m.id) AS no, m.lot_id, l.origin, l.expires_at, -m.amount_minor AS drawn,
               ac.asset_code
          FROM lot_movements m JOIN credit_lots l ON l.id = m.lot_id JOIN accounts ac ON ac.id = l.account_id
         WHERE m.transaction_id = CASE WHEN p_type = 'refund' THEN p_reverses ELSE p_transaction_id END
           AND m.amount_minor < 0
         ORDER BY CASE WHEN p_type = 'refund' THEN -coalesce(m.movement_no, m.id) ELSE coalesce(m.movement_no, m.id) END
    LOOP
        EXIT WHEN v_left = 0;
        v_take := d.drawn - least(v_skip, d.drawn);
        v_skip := v_skip - least(v_skip, d.drawn);
        CONTINUE WHEN v_take = 0;
        v_take := least(v_take, v_left);
        v_expires_at := d.expires_at;
        IF p_type = 'refund' AND d.expires_at <= v_now THEN
            SELECT v_now + make_interval(secs => CASE d.origin WHEN 'purchased' THEN p.purchased_expires_in_seconds
                                                               ELSE p.granted_expires_in_seconds END)
              INTO v_expires_at
              FROM (SELECT 1) AS one LEFT JOIN asset_lot_policies p ON p.asset_code = d.asset_code;
        END IF;
        v_origins := v_origins || d.origin;
        v_expires := v_expires || v_expires_at;
        v_amounts := v_amounts || v_take;
        v_left := v_left - v_take;
    END LOOP;
    IF v_left > 0 THEN
        v_origins := v_origins || 'purchased'::text;
        v_expires := v_expires || NULL::timestamptz;
        v_amounts := v_amounts || v_left;
    END IF;
    FOR i IN 1..cardinality(v_origins) LOOP
        v_at := (SELECT min(j) FROM generate_series(1, i) AS j
                  WHERE v_origins[j] = v_origins[i] AND v_expires[j] IS NOT DISTINCT FROM v_expires[i]);
        IF v_at < i THEN
            v_amounts[v_at] := v_amounts[v_at] + v_amounts[i];
            v_amounts[i] := 0;
        END IF;
    END LOOP;
    FOR i IN 1..cardinality(v_origins) LOOP
        CONTINUE WHEN v_amounts[i] = 0;
        PERFORM wallet_lot_fill(p_account_id, p_transaction_id, v_origins[i], v_expires[i], v_amounts[i]);
    END LOOP;
    RETURN EXISTS (SELECT 1 FROM unnest(v_expires) AS e WHERE e IS NOT NULL);
END $$;

-- Replaced by wallet_lots_draw (one definition of the draw for single and set-based debits).
DROP FUNCTION IF EXISTS wallet_lots_debit(bigint, text, uuid, text, uuid, bigint, boolean);

-- Debits: for each entry i in p_which (indexes into the parallel arrays, the trigger's), its
-- amount (negative) is drawn from its account's open lots in this order:
--   * an expiry or a capture takes expired lots first (a capture: the hold kept them from
--     expiring); every other debit takes lots that have not expired first (the posting paths
--     expire an account's lots before they debit it, so it finds no expired lot to take);
--   * a clawback takes the lots its original filled first (one from before lots: its origin's
--     opening lot); wallet_reverse_transaction lets it take more only for an admin's debt;
--   * then the asset's spend order (granted_first by default), sooner expiry first, no expiry
--     last, oldest first. An expiry goes by expiry alone.
-- The accounts of p_which are distinct (each lot is drawn by one debit). The open lots must cover
-- each debit (they sum to the balance before it), except for an admin clawback allowed to leave a
-- debt: it takes what there is. Returns the accounts that drew from a lot that expires.
CREATE OR REPLACE FUNCTION wallet_lots_draw(
    p_which integer[], p_account_ids bigint[], p_transaction_ids uuid[], p_types text[], p_reverses uuid[],
    p_amounts_minor bigint[], p_allow_negatives boolean[], p_spend_orders text[])
RETURNS bigint[]
LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := clock_timestamp();
    v_result record;
BEGIN
    WITH debit AS (
        SELECT w.i, p_account_ids[w.i] AS account_id, p_transaction_ids[w.i] AS transaction_id,
               p_types[w.i] AS type, p_reverses[w.i] AS reverses, -p_amounts_minor[w.i] AS want,
               coalesce(p_allow_negatives[w.i], false) AS allow_negative,
               coalesce(p_spend_orders[w.i], 'granted_first') AS spend_order
          FROM unnest(p_which) AS w(i)
    ), open AS (
        SELECT d.i, d.transaction_id, d.want, l.id, l.remaining_minor, l.expires_at,
               sum(l.remaining_minor) OVER (PARTITION BY d.i ORDER BY
                   CASE WHEN d.type IN ('expiry', 'capture') THEN NOT coalesce(l.expires_at <= v_now, false)
                        ELSE coalesce(l.expires_at <= v_now, false) END,
                   CASE WHEN d.type = 'clawback' THEN NOT EXISTS (
                            SELECT 1 FROM lot_movements f
                             WHERE f.transaction_id = d.reverses AND f.lot_id = l.id AND f.amount_minor > 0)
                            AND NOT (l.expires_at IS NULL AND l.origin = (
                                SELECT wallet_rule_lot_origin(o.type) FROM transactions o
                                 WHERE o.id = d.reverses AND o.seq < (SELECT s.first_seq FROM credit_lots_start s)))
                        ELSE false END,
                   CASE WHEN d.type = 'expiry' THEN false
                        WHEN d.spend_order = 'granted_first' THEN l.origin <> 'granted'
                        WHEN d.spend_order = 'purchased_first' THEN l.origin <> 'purchased'
                        ELSE false END,
                   CASE WHEN d.spend_order = 'fifo' AND d.type <> 'expiry' THEN NULL ELSE l.expires_at END NULLS LAST,
                   l.id) AS running
          FROM debit d
         CROSS JOIN LATERAL (SELECT x.id, x.remaining_minor, x.expires_at, x.origin FROM credit_lots x
                              WHERE x.account_id = d.account_id AND x.remaining_minor > 0 OFFSET 0) AS l
    ), drawn AS (
        SELECT o.i, o.transaction_id, o.id, o.running, o.expires_at,
               least(o.remaining_minor, o.want - (o.running - o.remaining_minor)) AS take
          FROM open o WHERE o.running - o.remaining_minor < o.want
    ), updated AS (
        -- Each lot is drawn by one debit; found by = ANY, an index scan whatever the planner
        -- guesses of the set's size.
        UPDATE credit_lots l SET remaining_minor = l.remaining_minor - (SELECT dr.take FROM drawn dr WHERE dr.id = l.id)
         WHERE l.id = ANY (ARRAY(SELECT dr.id FROM drawn dr))
    ), moved AS (
        INSERT INTO lot_movements (transaction_id, lot_id, amount_minor, movement_no)
        SELECT dr.transaction_id, dr.id, -dr.take,
               wallet_lot_movements_of(dr.transaction_id)
               + row_number() OVER (PARTITION BY dr.transaction_id ORDER BY dr.i, dr.running)
          FROM drawn dr ORDER BY dr.i, dr.running
    ), per_debit AS (
        SELECT d.*, coalesce(x.drawn, 0) AS drawn, coalesce(x.expiring, false) AS expiring
          FROM debit d
          LEFT JOIN (SELECT dr.i, sum(dr.take) AS drawn, bool_or(dr.expires_at IS NOT NULL) AS expiring
                       FROM drawn dr GROUP BY dr.i) AS x ON x.i = d.i
    )
    SELECT s.account_id, s.drawn, s.want, s.type, s.transaction_id,
           ARRAY(SELECT p.account_id FROM per_debit p WHERE p.expiring) AS expiring
      INTO v_result
      FROM (SELECT 1) AS one
      LEFT JOIN LATERAL (SELECT p.* FROM per_debit p WHERE p.drawn <> p.want AND NOT p.allow_negative
                          ORDER BY p.i LIMIT 1) AS s ON true;
    IF v_result.account_id IS NOT NULL THEN
        RAISE EXCEPTION 'account %: its open lots hold % and cannot cover the % of % %',
            v_result.account_id, v_result.drawn, v_result.want, v_result.type, v_result.transaction_id
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN v_result.expiring;
END $$;

-- What a clawback of the top-up or bonus p_original may take, judged under the account's row lock
-- after its due lots were expired:
--   left_minor: what is left of the credits it gave, unspent and unexpired: for each lot it
--     filled, the least of what it put there (less what its clawbacks took back from there) and
--     what the lot holds (nothing once the lot expired). Credits of one origin and expiry share a
--     lot, so what several originals put in one lot is left to each of them as far as the lot
--     holds it. An original from before lots: its origin's opening lot (no expiry).
--   expired_minor: what of the credits it gave expired (breakage already): per lot, the least of
--     what it put there (less its clawbacks' part) and what that lot lost to expiries. Where
--     several originals share the lot, each counts the lot's expiries as its own first (the
--     user's benefit of the doubt).
-- A clawback takes at most left_minor; an admin's, asking for a debt, at most what is left of
-- the original to reverse less expired_minor (the part the user spent or that repaid a debt).
CREATE OR REPLACE FUNCTION wallet_clawback_credits(p_original transactions, p_account_id bigint,
                                                   OUT left_minor bigint, OUT expired_minor bigint)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_now timestamptz := clock_timestamp();
BEGIN
    IF p_original.seq < (SELECT s.first_seq FROM credit_lots_start s) THEN
        SELECT coalesce(sum(l.remaining_minor), 0), 0 INTO left_minor, expired_minor
          FROM credit_lots l
         WHERE l.account_id = p_account_id AND l.origin = wallet_rule_lot_origin(p_original.type)
           AND l.expires_at IS NULL;
        RETURN;
    END IF;
    SELECT coalesce(sum(least(o.own, CASE WHEN o.expires_at <= v_now THEN 0 ELSE o.remaining_minor END)), 0),
           coalesce(sum(least(o.own, o.expired)), 0)
      INTO left_minor, expired_minor
      FROM (SELECT l.expires_at, l.remaining_minor,
                   greatest(f.amount_minor + coalesce((
                       SELECT sum(m.amount_minor) FROM transactions r JOIN lot_movements m ON m.transaction_id = r.id
                        WHERE r.reverses = p_original.id AND m.lot_id = l.id AND m.amount_minor < 0), 0), 0) AS own,
                   CASE WHEN l.expires_at IS NULL THEN 0 ELSE coalesce((
                       SELECT -sum(m.amount_minor) FROM lot_movements m JOIN transactions e ON e.id = m.transaction_id
                        WHERE m.lot_id = l.id AND e.type = 'expiry'), 0) END AS expired
              FROM lot_movements f JOIN credit_lots l ON l.id = f.lot_id
             WHERE f.transaction_id = p_original.id AND f.amount_minor > 0) AS o;
END $$;

-- Whether p_moved_minor, the sum (numeric) of a transaction's lot movements on one user account,
-- is what its entry there implies: a debit draws exactly its amount (an admin clawback into
-- debt: what there was, between it and nothing); a credit fills its amount less the debt it
-- repaid. The rule the trigger below moves lots by, as `wallet verify` and the live audit check it.
CREATE OR REPLACE FUNCTION wallet_lots_moved_as_entry(p_entry_minor bigint, p_moved_minor numeric,
                                                      p_allow_negative boolean, p_balance_after_minor bigint)
RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN p_entry_minor < 0
                THEN p_moved_minor = p_entry_minor
                     OR (p_allow_negative AND p_moved_minor BETWEEN p_entry_minor AND 0)
                ELSE p_moved_minor = least(p_entry_minor, greatest(p_balance_after_minor, 0)) END
$$;

-- Once per INSERT statement on ledger_entries: each entry on a user account fills or draws lots,
-- then the earliest open expiry of each account whose expiring lots changed is cached on its row
-- (most postings touch none: no second update).
--
-- Lots belong to one account, so postings to different accounts commute; only the entries of one
-- account must be applied in the order they were written (seq). So the entries of accounts with
-- one entry in the statement (a group commit's or a batch's usual case) are applied set-based, a
-- few statements for all of them: every debit's draw at once (wallet_lots_draw, which also draws
-- for a single entry), then every top-up's or bonus's fill at once. The rest (accounts with
-- several entries, and credits that take other lots' origins: refunds and transfers received,
-- which read the draw of the same or an earlier transaction) go row by row, in seq order, after
-- the set-based debits. A PL/pgSQL call per entry had been the largest per-write cost of a group
-- or a batch (docs/PERFORMANCE.md).
--
-- The account and transaction of each entry are looked up by primary key, row by row (LIMIT 1
-- keeps the planner from turning the lookups into a join that would scan), with the asset's lot
-- policy; entries on system accounts (read once, a handful) are left out first.
CREATE OR REPLACE FUNCTION wallet_ledger_entries_lots() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_n integer;
    v_account_ids bigint[];
    v_amounts bigint[];
    v_transaction_ids uuid[];
    v_types text[];
    v_reverses uuid[];
    v_allow_negatives boolean[];
    v_spend_orders text[];
    v_fill_expires_ats timestamptz[];  -- per top-up or bonus: when its own lot expires (NULL: never)
    v_balances_after bigint[];
    v_origins text[];
    v_set_based boolean[];         -- per entry: applied by the set-based statements
    v_origin text;
    v_expiring boolean;
    v_accounts bigint[] := '{}';   -- accounts whose expiring lots changed
    v_debits integer[];            -- the set-based debits
    i integer;
BEGIN
    SELECT count(*)::integer, array_agg(r.account_id ORDER BY r.seq, r.entry_no),
           array_agg(r.amount_minor ORDER BY r.seq, r.entry_no),
           array_agg(r.transaction_id ORDER BY r.seq, r.entry_no), array_agg(r.type ORDER BY r.seq, r.entry_no),
           array_agg(r.reverses ORDER BY r.seq, r.entry_no),
           array_agg(r.allow_negative ORDER BY r.seq, r.entry_no),
           array_agg(r.spend_order ORDER BY r.seq, r.entry_no),
           array_agg(r.fill_expires_at ORDER BY r.seq, r.entry_no),
           array_agg(r.balance_after_minor ORDER BY r.seq, r.entry_no),
           array_agg(r.origin ORDER BY r.seq, r.entry_no),
           array_agg(r.uses = 1 AND (r.amount_minor < 0 OR r.origin IS NOT NULL) ORDER BY r.seq, r.entry_no)
      INTO v_n, v_account_ids, v_amounts, v_transaction_ids, v_types, v_reverses, v_allow_negatives,
           v_spend_orders, v_fill_expires_ats, v_balances_after, v_origins, v_set_based
      FROM (SELECT n.account_id, n.amount_minor, n.transaction_id, n.entry_no, t.seq, t.type, t.reverses,
                   t.allow_negative, p.spend_order,
                   -- A top-up's or bonus's own lot expires when it says, or after the asset's
                   -- default for its origin.
                   CASE wallet_rule_lot_origin(t.type)
                        WHEN 'purchased' THEN coalesce(t.credit_expires_at,
                                                       t.created_at + make_interval(secs => p.purchased_expires_in_seconds))
                        WHEN 'granted' THEN coalesce(t.credit_expires_at,
                                                     t.created_at + make_interval(secs => p.granted_expires_in_seconds))
                   END AS fill_expires_at,
                   CASE WHEN a.user_id = t.user_id THEN t.balance_after_minor
                        ELSE t.counterparty_balance_after_minor END AS balance_after_minor,
                   wallet_rule_lot_origin(t.type) AS origin,
                   count(*) OVER (PARTITION BY n.account_id) AS uses
              FROM (SELECT e.* FROM new_entries e
                     WHERE e.account_id <> ALL (ARRAY(SELECT s.id FROM accounts s WHERE s.kind = 'system'))
                    OFFSET 0) n
             CROSS JOIN LATERAL (SELECT x.user_id FROM accounts x WHERE x.id = n.account_id LIMIT 1) a
             CROSS JOIN LATERAL (SELECT y.* FROM transactions y WHERE y.id = n.transaction_id LIMIT 1) t
              LEFT JOIN LATERAL (SELECT z.* FROM asset_lot_policies z WHERE z.asset_code = t.asset_code LIMIT 1) p
                ON true) r;
    IF v_n = 0 THEN
        RETURN NULL;
    END IF;
    IF (SELECT count(*) FROM unnest(v_set_based) AS b WHERE b) < 2 THEN
        -- One entry (a single posting): the row-by-row call is cheaper than the set statements.
        v_set_based := array_fill(false, ARRAY[v_n]);
    END IF;

    -- Set-based debits: one draw for all of them.
    v_debits := ARRAY(SELECT w.i FROM generate_series(1, v_n) AS w(i) WHERE v_set_based[w.i] AND v_amounts[w.i] < 0);
    IF cardinality(v_debits) > 0 THEN
        v_accounts := v_accounts || wallet_lots_draw(v_debits, v_account_ids, v_transaction_ids, v_types, v_reverses,
                                                     v_amounts, v_allow_negatives, v_spend_orders);
    END IF;

    -- Set-based fills: a top-up's or bonus's own lot. What repaid a debt fills nothing.
    IF EXISTS (SELECT 1 FROM generate_series(1, v_n) AS w(i)
                WHERE v_set_based[w.i] AND v_amounts[w.i] > 0 AND v_balances_after[w.i] > 0) THEN
        WITH fill AS (
            SELECT w.i, v_account_ids[w.i] AS account_id, v_transaction_ids[w.i] AS transaction_id,
                   v_origins[w.i] AS origin, v_fill_expires_ats[w.i] AS expires_at,
                   least(v_amounts[w.i], v_balances_after[w.i]) AS amount
              FROM generate_series(1, v_n) AS w(i)
             WHERE v_set_based[w.i] AND v_amounts[w.i] > 0 AND v_balances_after[w.i] > 0
        ), lot AS (
            INSERT INTO credit_lots AS l (account_id, origin, expires_at, remaining_minor)
            SELECT f.account_id, f.origin, f.expires_at, f.amount FROM fill f ORDER BY f.i
                ON CONFLICT ON CONSTRAINT credit_lots_one_per_origin_and_expiry
                DO UPDATE SET remaining_minor = l.remaining_minor + EXCLUDED.remaining_minor
            RETURNING l.id, l.account_id
        )
        INSERT INTO lot_movements (transaction_id, lot_id, amount_minor, movement_no)
        SELECT f.transaction_id, lot.id, f.amount,
               wallet_lot_movements_of(f.transaction_id) + row_number() OVER (PARTITION BY f.transaction_id ORDER BY f.i)
          FROM fill f JOIN lot ON lot.account_id = f.account_id ORDER BY f.i;
        v_accounts := v_accounts || ARRAY(
            SELECT v_account_ids[w.i] FROM generate_series(1, v_n) AS w(i)
             WHERE v_set_based[w.i] AND v_amounts[w.i] > 0 AND v_balances_after[w.i] > 0
               AND v_fill_expires_ats[w.i] IS NOT NULL);
    END IF;

    -- The rest, row by row in seq order.
    FOR i IN 1..v_n LOOP
        CONTINUE WHEN v_set_based[i];
        v_origin := v_origins[i];
        IF v_amounts[i] > 0 AND v_origin IS NOT NULL THEN
            CONTINUE WHEN v_balances_after[i] <= 0;
            PERFORM wallet_lot_fill(v_account_ids[i], v_transaction_ids[i], v_origin, v_fill_expires_ats[i],
                                    least(v_amounts[i], v_balances_after[i]));
            v_expiring := v_fill_expires_ats[i] IS NOT NULL;
        ELSIF v_amounts[i] > 0 THEN
            v_expiring := wallet_lots_credit(v_account_ids[i], v_transaction_ids[i], v_types[i], v_reverses[i],
                                             v_amounts[i], v_balances_after[i]);
        ELSE
            v_expiring := cardinality(wallet_lots_draw(ARRAY[i], v_account_ids, v_transaction_ids, v_types, v_reverses,
                                                       v_amounts, v_allow_negatives, v_spend_orders)) > 0;
        END IF;
        IF v_expiring AND NOT v_account_ids[i] = ANY (v_accounts) THEN
            v_accounts := v_accounts || v_account_ids[i];
        END IF;
    END LOOP;
    IF cardinality(v_accounts) = 0 THEN
        RETURN NULL;
    END IF;
    UPDATE accounts a SET lots_expire_at = x.next_at
      FROM (SELECT u.id, (SELECT min(l.expires_at) FROM credit_lots l
                           WHERE l.account_id = u.id AND l.remaining_minor > 0) AS next_at
              FROM (SELECT DISTINCT v.id FROM unnest(v_accounts) AS v(id)) AS u) x
     WHERE a.id = x.id AND a.lots_expire_at IS DISTINCT FROM x.next_at;
    RETURN NULL;
END $$;

-- Expires what is due on one account, under its row lock: the remainders of its lots whose
-- expiry has passed leave the user in one `expiry` transaction into SYSTEM_BREAKAGE. Expired
-- holds are released first; credits still reserved by an open hold stay (as far as the hold needs
-- them) until the hold is captured, voided or expires, so a hold is never left uncovered.
-- Returns the amount expired. Cheap when nothing is due: one read of the locked row.
CREATE OR REPLACE FUNCTION wallet_expire_lots(p_account_id bigint) RETURNS bigint
LANGUAGE plpgsql AS $$
BEGIN
    RETURN wallet_expire_lots_for(p_account_id, 0, 0);
END $$;

-- The same, for a write about to move the account, so that its balance_after is what a read
-- right after it shows (a read counts due credits as gone as far as holds let them go):
--   * a capture of p_keep_minor keeps that much of the due credits for itself (it draws expired
--     lots first);
--   * a credit of p_incoming_minor that follows in this database transaction lets a hold rest on
--     it: the due credits the hold reserved go as far as the credit replaces them. The account is
--     short of its holds from the expiry to the credit, inside this transaction only.
DROP FUNCTION IF EXISTS wallet_expire_lots_keeping(bigint, bigint);
CREATE OR REPLACE FUNCTION wallet_expire_lots_for(p_account_id bigint, p_keep_minor bigint,
                                                  p_incoming_minor bigint) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_account accounts;
    v_now timestamptz;
    v_due bigint;
    v_amount bigint;
BEGIN
    SELECT * INTO v_account FROM accounts WHERE id = p_account_id FOR UPDATE;
    v_now := clock_timestamp();
    IF v_account.lots_expire_at IS NULL OR v_account.lots_expire_at > v_now THEN
        RETURN 0;
    END IF;
    IF v_account.held_minor > 0 AND wallet_release_expired_holds(p_account_id) > 0 THEN
        SELECT * INTO v_account FROM accounts WHERE id = p_account_id;
    END IF;
    SELECT coalesce(sum(l.remaining_minor), 0) INTO v_due
      FROM credit_lots l WHERE l.account_id = p_account_id AND l.remaining_minor > 0 AND l.expires_at <= v_now;
    v_amount := least(greatest(v_due - p_keep_minor, 0),
                      greatest(v_account.balance_minor + p_incoming_minor - v_account.held_minor, 0));
    IF v_amount <= 0 THEN
        RETURN 0;
    END IF;
    PERFORM wallet_post_expiry(v_account, v_amount, v_now);
    RETURN v_amount;
END $$;

-- (wallet_post_expiry, the expiry as a posting: db/sql/functions/40_posting.sql, with the posting core.)

-- What the debit paths call when a debit does not pass: releases expired holds and expires due
-- lots, and returns how much that freed or moved (0: nothing changed, the refusal stands).
CREATE OR REPLACE FUNCTION wallet_release_expired(p_account_id bigint) RETURNS bigint
LANGUAGE plpgsql AS $$
BEGIN
    RETURN wallet_release_expired_holds(p_account_id) + wallet_expire_lots(p_account_id);
END $$;

-- Expires the due lots of at most p_max_accounts accounts, skipping accounts another transaction
-- holds (that writer expires them, or the next run does) and accounts whose due credits are all
-- reserved by holds. Returns the accounts visited and the amount expired. Two runs at once each
-- take other accounts; a lot's remainder is drawn once, under its account's lock.
CREATE OR REPLACE FUNCTION wallet_sweep_expired_lots(p_max_accounts integer,
                                                     OUT accounts_swept integer, OUT expired_minor bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_account_id bigint;
BEGIN
    accounts_swept := 0;
    expired_minor := 0;
    FOR v_account_id IN
        SELECT a.id FROM accounts a
         WHERE a.lots_expire_at <= clock_timestamp() AND a.balance_minor > a.held_minor
         ORDER BY a.lots_expire_at
         LIMIT p_max_accounts
         FOR UPDATE SKIP LOCKED
    LOOP
        expired_minor := expired_minor + wallet_expire_lots(v_account_id);
        accounts_swept := accounts_swept + 1;
    END LOOP;
END $$;

-- The lots a transaction filled (positive) or drew (negative), in the order it moved them
-- (coalesce(movement_no, id): movement_no since migration 0013, the id before).
CREATE OR REPLACE FUNCTION wallet_lot_movement_document(m lot_movements, l credit_lots) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'lot_id', m.lot_id, 'origin', l.origin,
        'expires_at', to_char(l.expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
        'amount', m.amount_minor)
$$;

-- Each movement's lot by its key (LATERAL ... LIMIT 1), whatever the statistics say (see
-- wallet_transactions_document).
CREATE OR REPLACE FUNCTION wallet_transaction_lots(p_transaction_id uuid) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (
        SELECT coalesce(jsonb_agg(wallet_lot_movement_document(m, l.lot) ORDER BY coalesce(m.movement_no, m.id)), '[]'::jsonb)
          FROM lot_movements m
         CROSS JOIN LATERAL (SELECT x AS lot FROM credit_lots x WHERE x.id = m.lot_id LIMIT 1) l
         WHERE m.transaction_id = p_transaction_id);
END $$;

-- The same for several transactions at once (those without movements are left out).
CREATE OR REPLACE FUNCTION wallet_transactions_lots(p_transaction_ids uuid[])
RETURNS TABLE (transaction_id uuid, lots jsonb)
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN QUERY
        SELECT m.transaction_id, jsonb_agg(wallet_lot_movement_document(m, l.lot) ORDER BY coalesce(m.movement_no, m.id))
          FROM lot_movements m
         CROSS JOIN LATERAL (SELECT x AS lot FROM credit_lots x WHERE x.id = m.lot_id LIMIT 1) l
         WHERE m.transaction_id = ANY (p_transaction_ids)
         GROUP BY m.transaction_id;
END $$;

-- An account's balance as the user sees it now: as if due lots had been expired this instant
-- (as far as holds let them: what a hold reserves stays), split into purchased and granted,
-- with the next lot to expire. In debt, the whole (negative) balance shows as purchased.
-- p_lots_expire_at is the account's cached earliest expiry: without one (the usual case) this is
-- one aggregate over the account's few lots, and no query at all for an empty account.
CREATE OR REPLACE FUNCTION wallet_account_lots_now(
    p_account_id bigint, p_balance_minor bigint, p_held_minor bigint, p_lots_expire_at timestamptz,
    OUT balance_minor bigint, OUT purchased_minor bigint, OUT granted_minor bigint, OUT next_expiry jsonb)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_now timestamptz := clock_timestamp();
    v_due bigint;
    v_breakable bigint;
BEGIN
    IF p_balance_minor <= 0 THEN  -- no open lot: they sum to the balance, or to zero in debt
        balance_minor := p_balance_minor;
        purchased_minor := p_balance_minor;
        granted_minor := 0;
        RETURN;
    END IF;
    IF p_lots_expire_at IS NULL THEN  -- nothing expires
        balance_minor := p_balance_minor;
        SELECT coalesce(sum(l.remaining_minor) FILTER (WHERE l.origin = 'purchased'), 0),
               coalesce(sum(l.remaining_minor) FILTER (WHERE l.origin = 'granted'), 0)
          INTO purchased_minor, granted_minor
          FROM credit_lots l WHERE l.account_id = p_account_id AND l.remaining_minor > 0;
        RETURN;
    END IF;
    SELECT coalesce(sum(l.remaining_minor) FILTER (WHERE l.expires_at <= v_now), 0)
      INTO v_due FROM credit_lots l WHERE l.account_id = p_account_id AND l.remaining_minor > 0;
    v_breakable := least(v_due, greatest(p_balance_minor - p_held_minor, 0));
    balance_minor := p_balance_minor - v_breakable;
    IF p_balance_minor < 0 THEN
        purchased_minor := p_balance_minor;
        granted_minor := 0;
    ELSE
        -- Due lots are expired in expiry order: what is left of them past v_breakable stays.
        SELECT coalesce(sum(k.kept) FILTER (WHERE k.origin = 'purchased'), 0),
               coalesce(sum(k.kept) FILTER (WHERE k.origin = 'granted'), 0)
          INTO purchased_minor, granted_minor
          FROM (SELECT l.origin,
                       CASE WHEN coalesce(l.expires_at > v_now, true) THEN l.remaining_minor
                            ELSE least(l.remaining_minor, greatest(0, sum(l.remaining_minor) OVER (
                                     PARTITION BY coalesce(l.expires_at > v_now, true)
                                     ORDER BY l.expires_at, l.id) - v_breakable)) END AS kept
                  FROM credit_lots l WHERE l.account_id = p_account_id AND l.remaining_minor > 0) k;
    END IF;
    SELECT jsonb_build_object('amount', sum(l.remaining_minor),
                              'at', to_char(l.expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))
      INTO next_expiry
      FROM credit_lots l
     WHERE l.account_id = p_account_id AND l.remaining_minor > 0
       AND l.expires_at = (SELECT min(x.expires_at) FROM credit_lots x
                            WHERE x.account_id = p_account_id AND x.remaining_minor > 0 AND x.expires_at > v_now)
     GROUP BY l.expires_at;
END $$;
