-- Re-installed by every `wallet migrate` (after the versioned migrations); see wallet.db.migrate.
-- Reversals: a refund gives back (part of) a spend or capture; a clawback takes back (part of) a
-- top-up or bonus. A reversal is a new transaction with the original's entries mirrored (history
-- is never edited); partial reversals may repeat until the original's amount is used up, which
-- the database enforces (reversal_totals, maintained by the transactions trigger).
-- Fair to the user when credits expire: a clawback takes at most what is left of its original's
-- credits (below), and a refund gives back usable credits, never credits into a lot that has
-- expired (wallet_lots_credit).
--
-- Lock order: the idempotency key, then the user's account row. Every reversal of one original
-- takes that same row lock, so racing partial reversals are applied one after the other, each
-- seeing what the previous ones left.
CREATE OR REPLACE FUNCTION wallet_reverse_transaction(
    p_api_key_id bigint, p_idempotency_key text, p_transaction_id uuid, p_amount_minor bigint,
    p_reason text, p_metadata jsonb, p_allow_negative boolean, p_request_id text DEFAULT NULL,
    OUT outcome text, OUT body jsonb, OUT replayed boolean)
LANGUAGE plpgsql AS $$
DECLARE
    v_fingerprint bytea;
    v_original transactions;
    v_type text;
    v_account_id bigint;
    v_system_account_id bigint;
    v_system_code text;
    v_remaining_minor bigint;
    v_credits record;
    v_clawable_minor bigint;
    v_amount_minor bigint;
    v_delta_minor bigint;
    v_allow_negative boolean;
    v_posting wallet_posting;
    v_posted record;
    v_transaction_id uuid;
BEGIN
    replayed := false;
    p_metadata := coalesce(p_metadata, '{}'::jsonb);
    p_allow_negative := coalesce(p_allow_negative, false);
    v_fingerprint := sha256(convert_to(jsonb_build_object(
        'operation', 'reverse', 'transaction_id', p_transaction_id, 'amount', p_amount_minor,
        'reason', p_reason, 'metadata', p_metadata, 'allow_negative', p_allow_negative)::text, 'UTF8'));

    -- The key first: a retry is answered from what was stored, whatever has changed since in
    -- the reference data (an asset deactivated, a user's id mistyped in the retry).
    SELECT l.outcome, l.body, l.replayed INTO outcome, body, replayed
        FROM wallet_idempotency_lookup(p_api_key_id, p_idempotency_key, v_fingerprint) AS l;
    IF outcome IS NOT NULL THEN
        RETURN;
    END IF;

    SELECT * INTO v_original FROM transactions WHERE id = p_transaction_id;
    IF NOT FOUND THEN
        outcome := 'transaction_not_found';
        body := wallet_error_body(outcome, format('no transaction with id %s', p_transaction_id), 'transaction_id');
        RETURN;
    END IF;
    v_type := wallet_rule_reversed_by(v_original.type);
    IF v_type IS NULL THEN
        outcome := 'not_reversible';
        body := wallet_error_body(outcome,
            format('a %s cannot be reversed; only top-ups, bonuses, spends and captures can', v_original.type),
            'transaction_id');
        RETURN;
    END IF;

    -- The original's own entries name the accounts to mirror: the user's and the system one.
    SELECT a.id INTO STRICT v_account_id FROM accounts a
        WHERE a.user_id = v_original.user_id AND a.asset_code = v_original.asset_code;
    SELECT a.id, a.system_code INTO STRICT v_system_account_id, v_system_code
        FROM ledger_entries e JOIN accounts a ON a.id = e.account_id
        WHERE e.transaction_id = p_transaction_id AND a.kind = 'system';
    PERFORM 1 FROM accounts WHERE id = v_account_id FOR UPDATE;
    -- Due lots are expired first: a clawback draws no expired credit, and a refund's
    -- balance_after is then what a balance read at that instant says.
    PERFORM wallet_expire_lots(v_account_id);

    SELECT v_original.amount_minor - coalesce(
               (SELECT r.reversed_amount_minor FROM reversal_totals r WHERE r.transaction_id = p_transaction_id), 0)
      INTO v_remaining_minor;
    -- A clawback takes back credits the original gave, not others: at most what is left of them,
    -- unspent and unexpired (wallet_clawback_credits). An admin asking for a debt may also take
    -- back the part the user spent (drawn from the user's other credits, then below zero), never
    -- the part that expired: that is breakage already and is not taken twice. Without an amount,
    -- a clawback takes all it may.
    IF v_type = 'clawback' THEN
        v_credits := wallet_clawback_credits(v_original, v_account_id);
        v_clawable_minor := greatest(CASE WHEN p_allow_negative THEN v_remaining_minor - v_credits.expired_minor
                                          ELSE least(v_remaining_minor, v_credits.left_minor) END, 0);
    END IF;
    v_amount_minor := coalesce(p_amount_minor, nullif(v_clawable_minor, 0), v_remaining_minor);
    v_delta_minor := wallet_rule_user_sign(v_type) * v_amount_minor;
    v_allow_negative := p_allow_negative AND v_delta_minor < 0;

    IF v_remaining_minor = 0 OR v_amount_minor > v_remaining_minor THEN
        outcome := 'amount_exceeds_reversible';
        body := wallet_error_body(outcome,
            format('%s of transaction %s is left to reverse; cannot reverse %s', v_remaining_minor,
                   p_transaction_id, v_amount_minor), 'amount');
    ELSIF v_amount_minor > v_clawable_minor THEN
        outcome := 'amount_exceeds_clawable';
        body := wallet_error_body(outcome, CASE
            WHEN p_allow_negative THEN
                format('%s of the credits of transaction %s expired (breakage) and cannot be clawed back; '
                       'at most %s can, not %s', least(v_credits.expired_minor, v_remaining_minor),
                       p_transaction_id, v_clawable_minor, v_amount_minor)
            ELSE
                format('%s of the credits of transaction %s is left unspent and unexpired; cannot claw back %s '
                       '(an admin may claw back what was spent as a debt with allow_negative)',
                       v_clawable_minor, p_transaction_id, v_amount_minor) END, 'amount');
    ELSE
        -- One posting of the core (wallet_post): a refund lets a hold rest on what it gives back
        -- (the due credits the hold reserved go as far as the refund replaces them, as a read
        -- right after counts them); an admin's clawback may leave a debt.
        v_posting.type := v_type;
        v_posting.api_key_id := p_api_key_id;
        v_posting.idempotency_key := p_idempotency_key;
        v_posting.request_id := p_request_id;
        v_posting.user_id := v_original.user_id;
        v_posting.asset_code := v_original.asset_code;
        v_posting.amount_minor := v_amount_minor;
        v_posting.description := p_reason;
        v_posting.metadata := p_metadata;
        v_posting.reverses := p_transaction_id;
        v_posting.allow_negative := v_allow_negative;
        v_posting.account_ids := ARRAY[v_account_id, v_system_account_id];
        v_posting.amounts_minor := ARRAY[v_delta_minor, -v_delta_minor];
        v_posting.covered_by := CASE WHEN v_allow_negative THEN 'nothing' ELSE 'available' END;
        SELECT p.transaction_id, p.document INTO v_posted FROM wallet_post(ARRAY[v_posting], true) AS p;
        IF v_posted.transaction_id IS NULL THEN
            outcome := 'insufficient_funds';
            body := wallet_insufficient_funds_body(v_original.user_id, v_original.asset_code, v_amount_minor,
                                                   p_note => '(an admin may allow a debt with allow_negative)');
        ELSE
            outcome := 'posted';
            body := v_posted.document;
            v_transaction_id := v_posted.transaction_id;
        END IF;
    END IF;
    PERFORM wallet_idempotency_store_one(p_api_key_id, p_idempotency_key, v_fingerprint, outcome, body,
                                         v_transaction_id);
END $$;
