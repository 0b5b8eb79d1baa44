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
-- Under those locks each account's writes are applied in arrival order, in memory: a debit the
-- running available balance does not cover is refused alone (`insufficient_funds`, stored), the
-- rest go through. Then one statement writes every transaction, every entry and every balance,
-- and one more stores every outcome.
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
    v_balances_after bigint[];   -- per accepted write: the user's balance right after it
    v_ids uuid[];
    v_row record;
    v_missing record;
    v_account bigint := NULL;
    v_balance bigint;
    v_held bigint;
    v_released boolean;
    v_final_accounts bigint[] := '{}';  -- the accounts with an accepted write
    v_final_balances bigint[] := '{}';  -- and each one's balance after its last
    v_position integer;
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
    v_balances_after := array_fill(NULL::bigint, ARRAY[v_n]);
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
        SELECT w.n, k.request_sha256, k.outcome, k.response_body
          FROM (SELECT u.api_key_id, u.key, u.n::integer AS n
                  FROM unnest(p_api_key_ids, p_idempotency_keys) WITH ORDINALITY AS u(api_key_id, key, n)) AS w
          JOIN idempotency_keys k ON k.api_key_id = w.api_key_id AND k.key = w.key
         WHERE v_primary[v_primary[w.n]] <> 0 AND v_primary[w.n] <> 0
    LOOP
        IF v_row.request_sha256 <> v_fingerprints[v_row.n] THEN
            v_outcomes[v_row.n] := 'idempotency_key_reused';
            v_bodies[v_row.n] := wallet_error_body('idempotency_key_reused',
                'this idempotency key was already used with a different request', 'idempotency_key');
        ELSE
            v_outcomes[v_row.n] := v_row.outcome;
            v_bodies[v_row.n] := v_row.response_body;
            v_replayed[v_row.n] := true;
        END IF;
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
    PERFORM wallet_expire_lots(a.id)
       FROM (SELECT DISTINCT v_accounts[w.n] AS id FROM generate_series(1, v_n) AS w(n)
              WHERE v_accounts[w.n] IS NOT NULL) AS d
      CROSS JOIN LATERAL (SELECT x.id FROM accounts x
                           WHERE x.id = d.id AND x.lots_expire_at <= clock_timestamp() LIMIT 1) AS a;
    -- Due credits left now are reserved by holds; a credit would let a hold rest on it and those
    -- go (wallet_expire_lots_for, which this in-memory pass does not follow). Every write of such
    -- an account with a credit in the group is left to the caller, to be posted alone (rare).
    FOR v_row IN
        SELECT DISTINCT a.id
          FROM generate_series(1, v_n) AS w(n)
         CROSS JOIN LATERAL (SELECT x.id FROM accounts x
                              WHERE x.id = v_accounts[w.n] AND x.held_minor > 0
                                AND x.lots_expire_at <= clock_timestamp() LIMIT 1) AS a
         WHERE v_deltas[w.n] > 0 AND v_accounts[w.n] IS NOT NULL
    LOOP
        FOR i IN 1..v_n LOOP
            IF v_accounts[i] = v_row.id THEN
                v_accounts[i] := NULL;
                v_primary[i] := 0;
            END IF;
        END LOOP;
    END LOOP;

    -- Each account's writes in arrival order, against its running balance.
    FOR v_row IN
        SELECT w.n, a.id AS account_id, a.balance_minor, a.held_minor
          FROM generate_series(1, v_n) AS w(n)
         CROSS JOIN LATERAL (SELECT x.id, x.balance_minor, x.held_minor
                               FROM accounts x WHERE x.id = v_accounts[w.n] LIMIT 1) AS a
         ORDER BY a.id, w.n
    LOOP
        IF v_account IS DISTINCT FROM v_row.account_id THEN
            v_account := v_row.account_id;
            v_balance := v_row.balance_minor;
            v_held := v_row.held_minor;
            v_released := false;
        END IF;
        IF v_deltas[v_row.n] < 0 AND v_balance - v_held + v_deltas[v_row.n] < 0
           AND v_held > 0 AND NOT v_released THEN
            -- Expired holds may still be counted in held_minor: release them, under the lock.
            PERFORM wallet_release_expired_holds(v_account);
            SELECT a.held_minor INTO v_held FROM accounts a WHERE a.id = v_account;
            v_released := true;
        END IF;
        IF v_deltas[v_row.n] > 0 OR v_balance - v_held + v_deltas[v_row.n] >= 0 THEN
            v_balance := v_balance + v_deltas[v_row.n];
            v_balances_after[v_row.n] := v_balance;
            v_ids[v_row.n] := gen_random_uuid();
        ELSE
            v_outcomes[v_row.n] := 'insufficient_funds';
            v_bodies[v_row.n] := wallet_error_body('insufficient_funds',
                format('available balance of %s %s is less than %s',
                       p_user_ids[v_row.n], p_asset_codes[v_row.n], p_amounts_minor[v_row.n]),
                'amount');
        END IF;
    END LOOP;

    FOR i IN 1..v_n LOOP
        CONTINUE WHEN v_ids[i] IS NULL;
        v_position := array_position(v_final_accounts, v_accounts[i]);
        IF v_position IS NULL THEN
            v_final_accounts := v_final_accounts || v_accounts[i];
            v_final_balances := v_final_balances || v_balances_after[i];
        ELSE
            v_final_balances[v_position] := v_balances_after[i];  -- a later write of the account
        END IF;
    END LOOP;

    -- One statement: every transaction (in arrival order), both entries of each, every balance.
    FOR v_row IN
        WITH accepted AS (
            SELECT w.n, v_ids[w.n] AS id, v_accounts[w.n] AS account_id, v_systems[w.n] AS system_id,
                   v_deltas[w.n] AS delta, v_balances_after[w.n] AS balance_after
              FROM generate_series(1, v_n) AS w(n)
             WHERE v_ids[w.n] IS NOT NULL
        ), posted AS (
            INSERT INTO transactions (id, type, api_key_id, idempotency_key, user_id, asset_code, amount_minor,
                                      balance_after_minor, description, metadata, request_id)
            SELECT a.id, p_types[a.n], p_api_key_ids[a.n], p_idempotency_keys[a.n], p_user_ids[a.n],
                   p_asset_codes[a.n], p_amounts_minor[a.n], a.balance_after, p_descriptions[a.n],
                   coalesce(p_metadata[a.n], '{}'::jsonb), p_request_ids[a.n]
              FROM accepted a ORDER BY a.n
            RETURNING id, created_at
        ), entries AS (
            INSERT INTO ledger_entries (transaction_id, entry_no, account_id, asset_code, amount_minor)
            SELECT a.id, side.entry_no, side.account_id, p_asset_codes[a.n], side.amount_minor
              FROM accepted a
             CROSS JOIN LATERAL (VALUES (1::smallint, a.account_id, a.delta),
                                        (2::smallint, a.system_id, -a.delta)) AS side(entry_no, account_id, amount_minor)
        ), balances AS (
            -- Each account's balance after its last accepted write; found by = ANY (an index
            -- scan), not by a join (see the loop above).
            UPDATE accounts acc SET balance_minor = v_final_balances[array_position(v_final_accounts, acc.id)]
             WHERE acc.id = ANY (v_final_accounts)
        )
        SELECT a.n, p.created_at FROM posted p JOIN accepted a ON a.id = p.id
    LOOP
        i := v_row.n;
        v_outcomes[i] := 'posted';
        v_bodies[i] := wallet_transaction_document(
            v_ids[i], p_types[i], 'posted', p_user_ids[i], p_asset_codes[i], p_amounts_minor[i],
            v_balances_after[i], p_descriptions[i], coalesce(p_metadata[i], '{}'::jsonb), p_idempotency_keys[i],
            v_row.created_at,
            jsonb_build_array(
                wallet_entry_document(v_accounts[i], p_user_ids[i], 'user', v_deltas[i]),
                wallet_entry_document(v_systems[i], wallet_rule_system_account(p_types[i]), 'system', -v_deltas[i])))
            || wallet_transaction_extras(NULL, 0, NULL, NULL, 0, NULL)
            || '{"lots": []}'::jsonb;
    END LOOP;
    -- The lots each write moved (written by the entries trigger), read at once for the group.
    FOR v_row IN SELECT x.transaction_id, x.lots FROM wallet_transactions_lots(v_ids) AS x LOOP
        i := array_position(v_ids, v_row.transaction_id);
        v_bodies[i] := v_bodies[i] || jsonb_build_object('lots', v_row.lots);
    END LOOP;

    -- Every decided outcome that a single posting would store (posted or refused for funds).
    INSERT INTO idempotency_keys (api_key_id, key, request_sha256, outcome, response_body)
    SELECT p_api_key_ids[w.n], p_idempotency_keys[w.n], v_fingerprints[w.n], v_outcomes[w.n], v_bodies[w.n]
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
