-- Re-installed by every `wallet migrate` (after the versioned migrations); see wallet.db.migrate.
-- Reads of a user's postings by time, from the (user_id, asset_code, seq DESC) index.

-- The postings of the user's own account (transactions.user_id, asset_code) either side of the
-- instant p_at: before_seq, the newest stamped before it (at or before it, when p_inclusive), and
-- after_seq, the oldest stamped after that (NULL: none). A balance as of an instant and the bounds
-- of a history window are read through it (wallet.services.wallets).
-- Postings of one account are stamped under its row lock, so their times follow their seq: they
-- are found by a search over seq, each step one descent of the (user_id, asset_code, seq DESC)
-- index and a probe of the row's time: a few steps at a steady pace of postings, at most twice
-- log2(seq span) however they came (a span of a million seq values: 40), instead of an index of its own on (user_id,
-- asset_code, created_at, seq), which every posting wrote (93 bytes of WAL and its splits;
-- migration 0013 dropped it). A transfer received is on the counterparty's partial index
-- (transactions_counterparty_asset_time), read directly.
CREATE OR REPLACE FUNCTION wallet_account_seq_at(p_user_id text, p_asset_code text, p_at timestamptz,
                                                 p_inclusive boolean, OUT before_seq bigint, OUT after_seq bigint)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_before_at timestamptz;
    v_after_at timestamptz;
    v_step integer := 0;
    v_mid bigint;
    v_seq bigint;
    v_at timestamptz;
BEGIN
    SELECT t.seq, t.created_at INTO v_seq, v_at FROM transactions t
     WHERE t.user_id = p_user_id AND t.asset_code = p_asset_code
     ORDER BY t.seq DESC LIMIT 1;
    IF v_seq IS NULL OR v_at < p_at OR (p_inclusive AND v_at = p_at) THEN
        before_seq := v_seq;  -- no posting, or none after p_at
        RETURN;
    END IF;
    after_seq := v_seq;
    v_after_at := v_at;
    SELECT t.seq, t.created_at INTO v_seq, v_at FROM transactions t
     WHERE t.user_id = p_user_id AND t.asset_code = p_asset_code
     ORDER BY t.seq LIMIT 1;
    IF NOT (v_at < p_at OR (p_inclusive AND v_at = p_at)) THEN
        after_seq := v_seq;  -- none before p_at
        RETURN;
    END IF;
    before_seq := v_seq;
    v_before_at := v_at;
    -- Each step finds a posting strictly between the two and moves one of them to it (the newest
    -- at or below a seq value between them, or else the oldest above it). None left: they are
    -- neighbours. The seq value is, every other step, where p_at falls between the two stamps
    -- (postings come at a roughly steady pace: a few steps find it), and otherwise the middle of
    -- the span (the postings left between them are then at most those of half of it, whatever
    -- the pace).
    LOOP
        v_step := v_step + 1;
        IF v_step % 2 = 1 AND v_after_at > v_before_at THEN
            v_mid := before_seq + floor((after_seq - before_seq)
                                        * (extract(epoch FROM p_at - v_before_at) / extract(epoch FROM v_after_at - v_before_at)))::bigint;
            v_mid := least(greatest(v_mid, before_seq), after_seq - 1);
        ELSE
            v_mid := before_seq + (after_seq - before_seq) / 2;
        END IF;
        SELECT t.seq, t.created_at INTO v_seq, v_at FROM transactions t
         WHERE t.user_id = p_user_id AND t.asset_code = p_asset_code AND t.seq > before_seq AND t.seq <= v_mid
         ORDER BY t.seq DESC LIMIT 1;
        IF v_seq IS NULL THEN
            SELECT t.seq, t.created_at INTO v_seq, v_at FROM transactions t
             WHERE t.user_id = p_user_id AND t.asset_code = p_asset_code AND t.seq > v_mid AND t.seq < after_seq
             ORDER BY t.seq LIMIT 1;
            IF v_seq IS NULL THEN
                RETURN;
            END IF;
        END IF;
        IF v_at < p_at OR (p_inclusive AND v_at = p_at) THEN
            before_seq := v_seq;
            v_before_at := v_at;
        ELSE
            after_seq := v_seq;
            v_after_at := v_at;
        END IF;
    END LOOP;
END $$;
