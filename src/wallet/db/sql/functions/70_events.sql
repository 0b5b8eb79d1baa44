-- Re-installed by every `wallet migrate` (after the versioned migrations); see wallet.db.migrate.
-- Change events: the horizon of the feed, retention, and how a stored event is served. (A posted
-- transaction's event is written by the posting core, wallet_post, since migration 0017; a hold's
-- by triggers, see 0007_events.sql. They are read by wallet.services.events and delivered by
-- wallet.services.webhooks.)

-- The feed's horizon in the calling statement's snapshot: every event of a transaction below it
-- is committed and visible in that snapshot, or never will be. It is the oldest transaction
-- running in the snapshot, not counting those of other databases of the same server (their
-- transaction ids are in the snapshot too, and a long transaction there, a `pgbench -i`, a
-- batch job, must not hold this feed back); when none is left, the snapshot's xmax. Transaction
-- ids of other databases are told by pg_stat_activity (backend_xid and datid are shown to every
-- role). It is read after the snapshot was taken, which is safe: a transaction of another
-- database is never one of this one, and one that ended before the read only counts as if it were
-- ours (later, never wrong). Prepared (two-phase) transactions count as ours. STABLE: it runs in
-- the caller's snapshot, the one that the caller's scan of `events` uses.
CREATE OR REPLACE FUNCTION wallet_event_horizon() RETURNS xid8
LANGUAGE sql STABLE AS $$
    WITH elsewhere AS (
        SELECT coalesce(array_agg(s.backend_xid), '{}') AS xids
          FROM pg_stat_get_activity(NULL) AS s
         WHERE s.backend_xid IS NOT NULL
           AND s.datid IS DISTINCT FROM (SELECT d.oid FROM pg_database d WHERE d.datname = current_database())
    )
    SELECT coalesce(min(x), pg_snapshot_xmax(pg_current_snapshot()))
      FROM pg_snapshot_xip(pg_current_snapshot()) AS x, elsewhere
     WHERE NOT (x::xid = ANY (elsewhere.xids))
$$;

-- Deletes at most p_max of the oldest events written before p_before. Only a prefix of the feed
-- goes (an event is kept while an earlier one is kept), and never an event a webhook endpoint
-- has not got past yet (its cursor), nor one a reader cannot see yet. Returns how many went.
CREATE OR REPLACE FUNCTION wallet_prune_events(p_before timestamptz, p_max integer) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_keep_txid xid8;
    v_keep_seq bigint;
    v_deleted bigint;
BEGIN
    IF p_max IS NULL OR p_max < 1 THEN
        RAISE EXCEPTION 'p_max must be at least 1, got %', p_max USING ERRCODE = 'check_violation';
    END IF;
    -- The lowest position an endpoint still has to deliver after.
    SELECT w.cursor_txid, w.cursor_seq INTO v_keep_txid, v_keep_seq
      FROM webhook_endpoints w ORDER BY w.cursor_txid, w.cursor_seq LIMIT 1;
    PERFORM set_config('wallet.pruning_events', 'on', true);
    WITH oldest AS (
        SELECT e.txid, e.seq, e.created_at FROM events e
         WHERE e.txid < wallet_event_horizon()
           AND (v_keep_txid IS NULL OR (e.txid, e.seq) <= (v_keep_txid, v_keep_seq))
         ORDER BY e.txid, e.seq
         LIMIT p_max
    ), prefix AS (
        SELECT o.txid, o.seq
          FROM (SELECT o.txid, o.seq,
                       bool_and(o.created_at < p_before) OVER (ORDER BY o.txid, o.seq) AS all_old
                  FROM oldest o) AS o
         WHERE o.all_old
    ), gone AS (
        DELETE FROM events e USING prefix p WHERE e.txid = p.txid AND e.seq = p.seq RETURNING 1
    )
    SELECT count(*) INTO v_deleted FROM gone;
    PERFORM set_config('wallet.pruning_events', 'off', true);
    RETURN v_deleted;
END $$;

-- A transaction's event references its transaction instead of copying it (issue 18: the copy
-- was a fifth of what a write stored). Since migration 0017 the posting core writes it, in the
-- statement that inserts the transaction (wallet_post), with the transaction's id in
-- events.transaction_id and no payload; from 0013's time to 0017 a trigger wrote it with the id as
-- its payload, {"id": "<uuid>"}; before that the payload was the whole document, served as
-- stored. The feed renders the other two from the transaction, with the function that built the
-- copies, wallet_transaction_event_payload (migration 0007), from the same immutable row: the same
-- document, byte for byte, whichever way the event was stored. (The two-argument form of 0013's
-- time could not see transaction_id.)
DROP FUNCTION IF EXISTS wallet_event_payload(text, jsonb);

-- An event's payload as served: a transaction's event that names its transaction by id (the
-- column, or a payload holding only the id) is rendered from the transaction; every other event is
-- served as stored. A transaction is never deleted; were it missing, the event would be served as
-- its id alone, as it is stored.
CREATE OR REPLACE FUNCTION wallet_event_payload(p_type text, p_payload jsonb, p_transaction_id uuid) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    -- The transaction it names, either way it was stored; then one lookup of it.
    SELECT CASE WHEN r.id IS NULL THEN p_payload
                ELSE coalesce((SELECT wallet_transaction_event_payload(t) FROM transactions t WHERE t.id = r.id),
                              p_payload, jsonb_build_object('id', r.id)) END
      FROM (SELECT coalesce(p_transaction_id,
                            CASE WHEN p_type = 'transaction.posted' AND p_payload ? 'id'
                                      AND p_payload - 'id' = '{}'::jsonb
                                      AND p_payload ->> 'id' ~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
                                 THEN (p_payload ->> 'id')::uuid END) AS id) AS r
$$;
