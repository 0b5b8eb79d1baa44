-- Re-installed by every `wallet migrate` (after the versioned migrations); see wallet.db.migrate.
-- Group commit: single top-ups, bonuses and spends that arrived together, posted by one call,
-- in one database transaction (one round trip, one commit), each with its own outcome and its
-- own idempotency record, exactly as if each had called wallet_post_transaction in turn.

-- p_* are parallel arrays, one element per write, in arrival order (ord = 1..n). Returns one row
-- per write: its outcome, body and replay flag, or a NULL outcome for a write this call did not
-- decide (its idempotency key is held by a request still in flight, or it repeats a key whose
-- first use in the group was not stored): the caller posts those alone, afterwards.
--
-- Locks, deadlock-free: the idempotency keys' advisory locks are only TRIED (never waited for:
-- a busy key defers its write), then every user account of the group is locked in ascending id,
-- in one statement, before any is written. Every other writer takes its one key first and its
-- accounts in ascending id after, so no cycle can form.
--
-- Under those locks the writes are postings of the core (wallet_post, each alone): each
-- account's writes are applied in arrival order, in memory; a debit the running available
-- balance does not cover is refused alone (`insufficient_funds`, stored), the rest go through.
-- The core writes every transaction, every entry and every balance by one statement each, and
-- one more stores every outcome (wallet_idempotency_store).
CREATE OR REPLACE FUNCTION wallet_post_group(
    p_api_key_ids bigint[], p_idempotency_keys text[], p_types text[], p_user_ids text[],
    p_asset_codes text[], p_amounts_minor bigint[], p_descriptions text[], p_metadata jsonb[],
    p_request_ids text[] DEFAULT NULL)
RETURNS TABLE (ord integer, outcome text, body jsonb, replayed boolean)
LANGUAGE plpgsql AS $$
DECLARE
    v_n integer := cardinality(p_idempotency_keys);
    v_fingerprints bytea[];
    v_outcomes text[];
    v_bodies jsonb[];
    v_replayed boolean[];
    v_primary integer[];         -- per write: the first write of the group with its (client, key)
    v_accounts bigint[];         -- per write: the user's account
    v_systems bigint[];          -- per write: the system account on the other side
    v_deltas bigint[];
    v_posted integer[];          -- the writes posted through the core, in arrival order
    v_ids uuid[];
    v_row record;
    v_missing record;
    i integer;
BEGIN
    IF v_n IS NULL OR v_n < 1 OR cardinality(p_api_key_ids) <> v_n OR cardinality(p_types) <> v_n
       OR cardinality(p_user_ids) <> v_n OR cardinality(p_asset_codes) <> v_n
       OR cardinality(p_amounts_minor) <> v_n OR cardinality(p_descriptions) <> v_n
       OR cardinality(p_metadata) <> v_n
       OR EXISTS (SELECT 1 FROM unnest(p_types, p_amounts_minor) AS w(type, amount)
                  WHERE w.amount IS NULL OR w.amount <= 0 OR NOT coalesce(wallet_rule_direct(w.type), false)) THEN
        RAISE EXCEPTION 'invalid group: % writes, each needs a direct type and a positive amount', v_n
            USING ERRCODE = 'check_violation';
    END IF;
    v_outcomes := array_fill(NULL::text, ARRAY[v_n]);
    v_bodies := array_fill(NULL::jsonb, ARRAY[v_n]);
    v_replayed := array_fill(false, ARRAY[v_n]);
    v_accounts := array_fill(NULL::bigint, ARRAY[v_n]);
    v_systems := array_fill(NULL::bigint, ARRAY[v_n]);
    v_ids := array_fill(NULL::uuid, ARRAY[v_n]);

    -- The fingerprints, computed as wallet_post_transaction computes them (a retry posted alone
    -- must find the same one), and each write's first write with the same (client, key).
    SELECT array_agg(wallet_posting_fingerprint(w.type, w.user_id, w.asset_code, w.amount, w.description,
                                                w.metadata) ORDER BY w.n),
           array_agg(w.delta ORDER BY w.n),
           array_agg(w.first_n ORDER BY w.n)
      INTO v_fingerprints, v_deltas, v_primary
      FROM (SELECT u.*, wallet_rule_user_sign(u.type) * u.amount AS delta,
                   (min(u.n) OVER (PARTITION BY u.api_key_id, u.key))::integer AS first_n
              FROM unnest(p_api_key_ids, p_idempotency_keys, p_types, p_user_ids, p_asset_codes,
                          p_amounts_minor, p_descriptions, p_metadata)
                   WITH ORDINALITY AS u(api_key_id, key, type, user_id, asset_code, amount, description, metadata, n)
           ) AS w;

    -- Keys: tried, not waited for. A write whose key another request holds stays undecided.
    FOR i IN 1..v_n LOOP
        IF v_primary[i] = i
           AND NOT pg_try_advisory_xact_lock(hashtextextended(p_idempotency_keys[i], p_api_key_ids[i])) THEN
            v_primary[i] := 0;  -- busy: this write and its repeats are left to the caller
        END IF;
    END LOOP;

    -- Stored outcomes first (a replay does not depend on today's reference data).
    FOR v_row IN
        SELECT st.n, st.outcome, st.body, st.replayed
          FROM wallet_idempotency_stored(p_api_key_ids, p_idempotency_keys, v_fingerprints) AS st
         WHERE v_primary[v_primary[st.n]] <> 0 AND v_primary[st.n] <> 0
    LOOP
        v_outcomes[v_row.n] := v_row.outcome;
        v_bodies[v_row.n] := v_row.body;
        v_replayed[v_row.n] := v_row.replayed;
    END LOOP;

    -- The accounts of the writes to decide: the first of each key, not busy, not stored.
    FOR v_row IN
        SELECT w.n, u.id AS account_id, s.id AS system_id
          FROM (SELECT u.user_id, u.asset_code, u.type, u.n::integer AS n
                  FROM unnest(p_user_ids, p_asset_codes, p_types) WITH ORDINALITY AS u(user_id, asset_code, type, n)) AS w
          LEFT JOIN accounts u ON u.user_id = w.user_id AND u.asset_code = w.asset_code
                              AND EXISTS (SELECT 1 FROM asset_types t WHERE t.code = u.asset_code AND t.is_active)
          LEFT JOIN accounts s ON s.system_code = wallet_rule_system_account(w.type) AND s.asset_code = w.asset_code
         WHERE v_primary[w.n] = w.n AND v_outcomes[w.n] IS NULL
    LOOP
        IF v_row.account_id IS NULL OR v_row.system_id IS NULL THEN
            SELECT m.outcome, m.body INTO v_missing
              FROM wallet_missing_account(p_user_ids[v_row.n], p_asset_codes[v_row.n], 'user_id', 'asset_type') AS m;
            v_outcomes[v_row.n] := v_missing.outcome;
            v_bodies[v_row.n] := v_missing.body;
        ELSE
            v_accounts[v_row.n] := v_row.account_id;
            v_systems[v_row.n] := v_row.system_id;
        END IF;
    END LOOP;

    -- Every account at once, in ascending id.
    PERFORM 1 FROM accounts WHERE id = ANY (v_accounts) ORDER BY id FOR UPDATE;

    -- An account of the group with a lot past its expiry is expired first (its own transaction,
    -- written before the group's), so no debit counts expired credits as available and every
    -- balance_after is what a balance read at that instant says.
    -- (Accounts are read by one primary-key probe per write, LATERAL ... LIMIT 1: a join planned
    -- generically, for a set of unknown size, hash-joined a scan of every account, 9.5 ms a call
    -- at 19,000 accounts; see docs/PERFORMANCE.md.)
    -- Each account by its key: `coalesce(... , false)` keeps the condition from implying the
    -- partial index accounts_lots_expiring's predicate (lots_expire_at IS NOT NULL); with it,
    -- statistics taken while no account had an expiring lot made that index look empty, and every
    -- write of a group walked it whole, filtering by id (issue 20: 145 ms a group at 1 M
    -- transactions, where each account has lots that expire).
    PERFORM wallet_expire_lots(a.id)
       FROM (SELECT DISTINCT v_accounts[w.n] AS id FROM generate_series(1, v_n) AS w(n)
              WHERE v_accounts[w.n] IS NOT NULL) AS d
      CROSS JOIN LATERAL (SELECT x.id FROM accounts x
                           WHERE x.id = d.id AND coalesce(x.lots_expire_at <= clock_timestamp(), false) LIMIT 1) AS a;
    -- Due credits left now are reserved by holds; a credit would let a hold rest on it and those
    -- go (wallet_expire_lots_for, which this in-memory pass does not follow). Every write of such
    -- an account with a credit in the group is left to the caller, to be posted alone (rare).
    FOR v_row IN
        SELECT DISTINCT a.id
          FROM generate_series(1, v_n) AS w(n)
         CROSS JOIN LATERAL (SELECT x.id FROM accounts x
                              WHERE x.id = v_accounts[w.n] AND x.held_minor > 0
                                AND coalesce(x.lots_expire_at <= clock_timestamp(), false) LIMIT 1) AS a
         WHERE v_deltas[w.n] > 0 AND v_accounts[w.n] IS NOT NULL
    LOOP
        FOR i IN 1..v_n LOOP
            IF v_accounts[i] = v_row.id THEN
                v_accounts[i] := NULL;
                v_primary[i] := 0;
            END IF;
        END LOOP;
    END LOOP;

    -- The writes to post, in arrival order, through the core: each account's writes against
    -- its running balance, a debit it does not cover refused alone.
    v_posted := ARRAY(SELECT w.n FROM generate_series(1, v_n) AS w(n) WHERE v_accounts[w.n] IS NOT NULL ORDER BY w.n);
    IF cardinality(v_posted) > 0 THEN
        FOR v_row IN
            SELECT v_posted[c.ord] AS n, c.transaction_id, c.document
              FROM wallet_post(ARRAY(
                       SELECT ROW(NULL, p_types[x.n], p_api_key_ids[x.n], p_idempotency_keys[x.n], p_request_ids[x.n],
                                  p_user_ids[x.n], p_asset_codes[x.n], p_amounts_minor[x.n], p_descriptions[x.n],
                                  coalesce(p_metadata[x.n], '{}'::jsonb), NULL, NULL, 0, NULL, false, NULL, NULL,
                                  ARRAY[v_accounts[x.n], v_systems[x.n]], ARRAY[v_deltas[x.n], -v_deltas[x.n]], 0,
                                  'available')::wallet_posting
                         FROM unnest(v_posted) WITH ORDINALITY AS x(n, k) ORDER BY x.k), false) AS c
        LOOP
            IF v_row.transaction_id IS NULL THEN
                v_outcomes[v_row.n] := 'insufficient_funds';
                v_bodies[v_row.n] := wallet_insufficient_funds_body(p_user_ids[v_row.n], p_asset_codes[v_row.n],
                                                                    p_amounts_minor[v_row.n]);
            ELSE
                v_outcomes[v_row.n] := 'posted';
                v_bodies[v_row.n] := v_row.document;
                v_ids[v_row.n] := v_row.transaction_id;
            END IF;
        END LOOP;
    END IF;

    -- Every decided outcome that a single posting would store (posted or refused for funds).
    PERFORM wallet_idempotency_store(
        array_agg(p_api_key_ids[w.n] ORDER BY w.n), array_agg(p_idempotency_keys[w.n] ORDER BY w.n),
        array_agg(v_fingerprints[w.n] ORDER BY w.n), array_agg(v_outcomes[w.n] ORDER BY w.n),
        array_agg(v_bodies[w.n] ORDER BY w.n), array_agg(v_ids[w.n] ORDER BY w.n))
      FROM generate_series(1, v_n) AS w(n)
     WHERE v_primary[w.n] = w.n AND NOT v_replayed[w.n] AND v_outcomes[w.n] IN ('posted', 'insufficient_funds');

    -- Repeats of a key within the group: what a second request would get once the first is stored.
    FOR i IN 1..v_n LOOP
        CONTINUE WHEN v_primary[i] = i OR v_primary[i] = 0 OR v_outcomes[i] IS NOT NULL;
        IF v_primary[v_primary[i]] = 0 OR v_outcomes[v_primary[i]] NOT IN ('posted', 'insufficient_funds')
           AND NOT v_replayed[v_primary[i]] THEN
            CONTINUE;  -- the first was not stored: the caller posts this one alone
        ELSIF v_fingerprints[i] <> v_fingerprints[v_primary[i]] THEN
            v_outcomes[i] := 'idempotency_key_reused';
            v_bodies[i] := wallet_error_body('idempotency_key_reused',
                'this idempotency key was already used with a different request', 'idempotency_key');
        ELSE
            v_outcomes[i] := v_outcomes[v_primary[i]];
            v_bodies[i] := v_bodies[v_primary[i]];
            v_replayed[i] := true;
        END IF;
    END LOOP;

    RETURN QUERY SELECT w.n::integer, v_outcomes[w.n], v_bodies[w.n], v_replayed[w.n]
                   FROM generate_series(1, v_n) AS w(n);
END $$;
