-- Re-installed by every `wallet migrate` (after the versioned migrations); see wallet.db.migrate.
-- The per-day totals of the reports (migration 0014, wallet.services.rollup), and the reports
-- that read them: the liability report and the daily volume. Kept apart from 60_lots.sql, which
-- migration 0009 also installs, before these tables exist.

-- The lot movements of one transaction, with the asset and origin of each lot: by key (the
-- transaction's movements, each lot, its account), whatever the statistics say. The one path
-- from a transaction to its lots for the roll-up and the report; inlined (a SQL function).
CREATE OR REPLACE FUNCTION wallet_lots_moved_by(p_transaction_id uuid)
RETURNS TABLE (asset_code text, origin text, amount_minor bigint)
LANGUAGE sql STABLE AS $$
    SELECT ac.asset_code, l.origin, mv.amount_minor
      FROM (SELECT mv.lot_id, mv.amount_minor FROM lot_movements mv WHERE mv.transaction_id = p_transaction_id OFFSET 0) mv
     CROSS JOIN LATERAL (SELECT l.origin, l.account_id FROM credit_lots l WHERE l.id = mv.lot_id OFFSET 0) l
     CROSS JOIN LATERAL (SELECT ac.asset_code FROM accounts ac WHERE ac.id = l.account_id OFFSET 0) ac
$$;

-- What one transaction credited to and debited from user accounts, per asset (none: it touched
-- no user account): its entries by key, each account by key.
CREATE OR REPLACE FUNCTION wallet_user_volume_of(p_transaction_id uuid)
RETURNS TABLE (asset_code text, credited_minor bigint, debited_minor bigint)
LANGUAGE sql STABLE AS $$
    SELECT ac.asset_code, coalesce(sum(e.amount_minor) FILTER (WHERE e.amount_minor > 0), 0)::bigint,
           coalesce(-sum(e.amount_minor) FILTER (WHERE e.amount_minor < 0), 0)::bigint
      FROM (SELECT e.account_id, e.amount_minor FROM ledger_entries e WHERE e.transaction_id = p_transaction_id OFFSET 0) e
     CROSS JOIN LATERAL (SELECT ac.asset_code FROM accounts ac WHERE ac.id = e.account_id AND ac.kind = 'user' OFFSET 0) ac
     GROUP BY ac.asset_code
$$;

-- The day a transaction counts on in the per-day totals and the daily volume: the UTC day of its
-- time. Inlined.
CREATE OR REPLACE FUNCTION wallet_utc_day(p_at timestamptz) RETURNS date
LANGUAGE sql IMMUTABLE AS $$
    SELECT (p_at AT TIME ZONE 'UTC')::date
$$;

-- The per-day totals of the transactions with seq in (p_after_seq, p_through_seq], one function
-- per table: what wallet_roll_up adds for a chunk, and what `wallet verify` recomputes from the
-- start (0) to the checkpoint. By key from the seq range; inlined, under the caller's plan settings.
CREATE OR REPLACE FUNCTION wallet_rollup_days_of(p_after_seq bigint, p_through_seq bigint)
RETURNS TABLE (day date, first_seq bigint, last_seq bigint, first_at timestamptz, last_at timestamptz)
LANGUAGE sql STABLE AS $$
    SELECT wallet_utc_day(t.created_at), min(t.seq), max(t.seq), min(t.created_at), max(t.created_at)
      FROM transactions t
     WHERE t.seq > p_after_seq AND t.seq <= p_through_seq
     GROUP BY 1
$$;

CREATE OR REPLACE FUNCTION wallet_lot_flow_totals_of(p_after_seq bigint, p_through_seq bigint)
RETURNS TABLE (day date, asset_code text, origin text, type text, amount_minor bigint)
LANGUAGE sql STABLE AS $$
    SELECT wallet_utc_day(t.created_at), x.asset_code, x.origin, t.type, sum(x.amount_minor)::bigint
      FROM (SELECT t.id, t.type, t.created_at FROM transactions t
             WHERE t.seq > p_after_seq AND t.seq <= p_through_seq OFFSET 0) t
     CROSS JOIN LATERAL wallet_lots_moved_by(t.id) x
     GROUP BY 1, 2, 3, 4
$$;

CREATE OR REPLACE FUNCTION wallet_volume_totals_of(p_after_seq bigint, p_through_seq bigint)
RETURNS TABLE (day date, asset_code text, credited_minor bigint, debited_minor bigint, transactions bigint)
LANGUAGE sql STABLE AS $$
    SELECT wallet_utc_day(t.created_at), x.asset_code, sum(x.credited_minor)::bigint, sum(x.debited_minor)::bigint,
           count(*)
      FROM (SELECT t.id, t.created_at FROM transactions t
             WHERE t.seq > p_after_seq AND t.seq <= p_through_seq OFFSET 0) t
     CROSS JOIN LATERAL wallet_user_volume_of(t.id) x
     GROUP BY 1, 2
$$;

-- The lot movements of the transactions created in [p_lo, p_hi) (p_lo NULL: from the start),
-- and those of the opening lots (migration 0009: no transaction) by their own time, summed per
-- asset, lot origin and transaction type (NULL for the opening ones). The days the roll-up has
-- totals for (wallet_roll_up) are read from them where the window covers every rolled
-- transaction of the day; the transactions of a day the window cuts, and those not rolled yet,
-- are read movement by movement, found by seq. So the cost is one row per day plus what is not
-- rolled, whatever the window, and the sums are those of the movements themselves, to the unit.
-- Plans by key (seq, transaction id, lot id), whatever the statistics say.
CREATE OR REPLACE FUNCTION wallet_lot_flows(p_lo timestamptz, p_hi timestamptz)
RETURNS TABLE (asset_code text, origin text, type text, amount_minor numeric)
LANGUAGE sql STABLE
SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off SET jit = off
AS $$
    WITH days AS (
        SELECT d.day, d.first_seq, d.last_seq,
               (p_lo IS NULL OR d.first_at >= p_lo) AND d.last_at < p_hi AS whole,
               (p_lo IS NULL OR d.last_at >= p_lo) AND d.first_at < p_hi AS touched
          FROM rollup_days d
    ), ranges AS (  -- read movement by movement: the days the window cuts, then what is not rolled
        SELECT d.day, d.first_seq, d.last_seq FROM days d WHERE d.touched AND NOT d.whole
        UNION ALL
        SELECT NULL::date, r.through_seq + 1, NULL::bigint FROM rollup_checkpoint r
    )
    SELECT m.asset_code, m.origin, m.type, sum(m.amount_minor)
      FROM (SELECT f.asset_code, f.origin, f.type, f.amount_minor
              FROM days d JOIN lot_flow_totals f ON f.day = d.day
             WHERE d.whole
            UNION ALL
            SELECT x.asset_code, x.origin, t.type, x.amount_minor
              FROM ranges g
              CROSS JOIN LATERAL (
                  SELECT t.id, t.type FROM transactions t
                   WHERE t.seq >= g.first_seq AND t.seq <= coalesce(g.last_seq, 9223372036854775807)
                     AND (g.day IS NULL OR wallet_utc_day(t.created_at) = g.day)
                     AND (p_lo IS NULL OR t.created_at >= p_lo) AND t.created_at < p_hi
                  OFFSET 0) t
              CROSS JOIN LATERAL wallet_lots_moved_by(t.id) x
            UNION ALL
            SELECT ac.asset_code, l.origin, NULL, mv.amount_minor
              FROM lot_movements mv
              JOIN credit_lots l ON l.id = mv.lot_id
              JOIN accounts ac ON ac.id = l.account_id
             WHERE mv.transaction_id IS NULL
               AND (p_lo IS NULL OR mv.created_at >= p_lo) AND mv.created_at < p_hi) m
     GROUP BY m.asset_code, m.origin, m.type
$$;

-- Rolls at most p_max transactions after the checkpoint up into the per-day totals (migration
-- 0014: their lot movements, their volume) and moves the checkpoint; returns how many it rolled (0: caught up).
-- Only settled transactions, written more than p_settle ago: seq is taken when a posting writes,
-- not when it commits, so the roll stops before the first transaction not settled (the audit's
-- rule: waiting longer than any statement may run means none is skipped). One roller at a time:
-- the checkpoint row is locked, and a call that finds it locked returns NULL at once (another
-- process is rolling a chunk). Each call is one chunk, committed by its caller.
CREATE OR REPLACE FUNCTION wallet_roll_up(p_max integer, p_settle interval) RETURNS integer
LANGUAGE plpgsql
SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off SET jit = off
AS $$
DECLARE
    v_from bigint;
    v_to bigint;
    v_n integer;
BEGIN
    IF p_max IS NULL OR p_max < 1 OR p_settle IS NULL THEN
        RAISE EXCEPTION 'invalid roll: at most % transactions, settled for %', p_max, p_settle
            USING ERRCODE = 'check_violation';
    END IF;
    SELECT r.through_seq INTO v_from FROM rollup_checkpoint r FOR UPDATE SKIP LOCKED;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    SELECT max(x.seq), count(*) INTO v_to, v_n
      FROM (SELECT c.seq, bool_and(c.settled) OVER (ORDER BY c.seq) AS prefix_settled
              FROM (SELECT t.seq, t.created_at < clock_timestamp() - p_settle AS settled
                      FROM transactions t WHERE t.seq > v_from ORDER BY t.seq LIMIT p_max) c) x
     WHERE x.prefix_settled;
    IF v_n = 0 THEN
        RETURN 0;
    END IF;
    INSERT INTO rollup_days AS d (day, first_seq, last_seq, first_at, last_at)
    SELECT * FROM wallet_rollup_days_of(v_from, v_to)
    ON CONFLICT (day) DO UPDATE
       SET first_seq = least(d.first_seq, EXCLUDED.first_seq), last_seq = greatest(d.last_seq, EXCLUDED.last_seq),
           first_at = least(d.first_at, EXCLUDED.first_at), last_at = greatest(d.last_at, EXCLUDED.last_at);
    INSERT INTO lot_flow_totals AS f (day, asset_code, origin, type, amount_minor)
    SELECT * FROM wallet_lot_flow_totals_of(v_from, v_to)
    ON CONFLICT (day, asset_code, origin, type) DO UPDATE SET amount_minor = f.amount_minor + EXCLUDED.amount_minor;
    INSERT INTO volume_totals AS v (day, asset_code, credited_minor, debited_minor, transactions)
    SELECT * FROM wallet_volume_totals_of(v_from, v_to)
    ON CONFLICT (day, asset_code) DO UPDATE
       SET credited_minor = v.credited_minor + EXCLUDED.credited_minor,
           debited_minor = v.debited_minor + EXCLUDED.debited_minor,
           transactions = v.transactions + EXCLUDED.transactions;
    UPDATE rollup_checkpoint SET through_seq = v_to;
    RETURN v_n;
END $$;

-- The liability report: per asset, what users hold (outstanding, as of p_as_of) split by origin,
-- and the flows through lots within [p_from, p_to): issued (top-ups purchased, bonuses granted),
-- spent (spends and captures), refunded, expired, clawed back and paid as transfer fees. Read
-- from the lot movements, stamped with their transaction's time, so for any period
--   outstanding(to) = outstanding(from) + issued - spent + refunded - expired - clawed_back - transfer_fees
-- to the unit (transfers between users move credits without changing the total, except the fee).
-- Outstanding is every movement up to p_as_of (times have microseconds: up to and including it).
CREATE OR REPLACE FUNCTION wallet_liability_report(p_as_of timestamptz, p_from timestamptz, p_to timestamptz)
RETURNS TABLE (asset_type text, outstanding_purchased bigint, outstanding_granted bigint, issued_purchased bigint,
               issued_granted bigint, spent bigint, refunded bigint, expired bigint, clawed_back bigint,
               transfer_fees bigint)
LANGUAGE sql STABLE AS $$
    SELECT a.code,
           coalesce(sum(m.amount_minor) FILTER (WHERE NOT m.in_period AND m.origin = 'purchased'), 0)::bigint,
           coalesce(sum(m.amount_minor) FILTER (WHERE NOT m.in_period AND m.origin = 'granted'), 0)::bigint,
           coalesce(sum(m.amount_minor) FILTER (WHERE m.in_period AND m.type = 'topup'), 0)::bigint,
           coalesce(sum(m.amount_minor) FILTER (WHERE m.in_period AND m.type = 'bonus'), 0)::bigint,
           coalesce(-sum(m.amount_minor) FILTER (WHERE m.in_period AND m.type IN ('spend', 'capture')), 0)::bigint,
           coalesce(sum(m.amount_minor) FILTER (WHERE m.in_period AND m.type = 'refund'), 0)::bigint,
           coalesce(-sum(m.amount_minor) FILTER (WHERE m.in_period AND m.type = 'expiry'), 0)::bigint,
           coalesce(-sum(m.amount_minor) FILTER (WHERE m.in_period AND m.type = 'clawback'), 0)::bigint,
           coalesce(-sum(m.amount_minor) FILTER (WHERE m.in_period AND m.type = 'transfer'), 0)::bigint
      FROM asset_types a
      LEFT JOIN (SELECT o.asset_code, o.origin, o.type, o.amount_minor, false AS in_period
                   FROM wallet_lot_flows(NULL, p_as_of + interval '1 microsecond') o
                 UNION ALL
                 SELECT p.asset_code, p.origin, p.type, p.amount_minor, true
                   FROM wallet_lot_flows(p_from, p_to) p) m ON m.asset_code = a.code
     GROUP BY a.code
     ORDER BY a.code
$$;

-- The daily volume from the UTC day p_from on: per UTC day of the transactions' time and asset,
-- what was credited to and debited from user accounts and by how many transactions; the days'
-- totals, and the transactions not rolled up yet one by one.
CREATE OR REPLACE FUNCTION wallet_volume_per_day(p_from date)
RETURNS TABLE (day date, asset_code text, credited_minor numeric, debited_minor numeric, transactions bigint)
LANGUAGE sql STABLE
SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off SET jit = off
AS $$
    SELECT m.day, m.asset_code, sum(m.credited), sum(m.debited), sum(m.transactions)::bigint
      FROM (SELECT v.day, v.asset_code, v.credited_minor AS credited, v.debited_minor AS debited, v.transactions
              FROM volume_totals v
             WHERE v.day >= p_from
            UNION ALL
            SELECT wallet_utc_day(t.created_at), x.asset_code, x.credited_minor, x.debited_minor, 1
              FROM rollup_checkpoint r
             CROSS JOIN LATERAL (SELECT t.id, t.created_at FROM transactions t
                                  WHERE t.seq > r.through_seq AND wallet_utc_day(t.created_at) >= p_from
                                 OFFSET 0) t
             CROSS JOIN LATERAL wallet_user_volume_of(t.id) x) m
     GROUP BY m.day, m.asset_code
     ORDER BY m.day, m.asset_code
$$;
