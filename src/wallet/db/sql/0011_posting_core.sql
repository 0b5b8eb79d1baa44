-- One posting core (issue 18): every kind of posting is a row of `wallet_posting`, posted by
-- wallet_post(wallet_posting[]) (db/sql/functions/40_posting.sql), which alone writes
-- transactions and ledger entries.
--
-- A posting is its transaction's columns plus its legs: the entries 1..n as two parallel arrays
-- (account, signed amount), the user's own account first; what its debits must leave covered;
-- and a change to the user account's held amount (a capture releases its hold).
CREATE TYPE wallet_posting AS (
    id                        uuid,         -- NULL: a new one
    type                      text,
    api_key_id                bigint,
    idempotency_key           text,
    request_id                text,
    user_id                   text,
    asset_code                text,
    amount_minor              bigint,
    description               text,
    metadata                  jsonb,
    reverses                  uuid,
    counterparty_user_id      text,         -- a transfer: the receiver, whose account is leg 2
    fee_minor                 bigint,
    hold_id                   uuid,
    allow_negative            boolean,      -- an admin clawback that may leave a debt
    credit_expires_at         timestamptz,  -- a bonus's own expiry ...
    credit_expires_in_seconds integer,      -- ... or counted from the moment it is written
    account_ids               bigint[],     -- the legs: entry i moves amounts_minor[i] on account_ids[i]
    amounts_minor             bigint[],
    held_change_minor         bigint,       -- added to the user account's held_minor
    covered_by                text          -- what a debit must leave: 'available' (balance - held >= 0),
                                            -- 'balance' (balance >= 0), 'nothing' (admin debt, expiry)
);

-- An idempotency record of a posted transaction keeps its id, not a copy of the answer: a replay
-- renders the same document again from the transaction (wallet_idempotency_lookup). Records
-- written before keep their response_body and replay it as stored; refusals and holds store
-- their body as before.
ALTER TABLE idempotency_keys
    ALTER COLUMN response_body DROP NOT NULL,
    ADD COLUMN transaction_id uuid,
    ADD CONSTRAINT idempotency_keys_answer_kept CHECK (response_body IS NOT NULL OR transaction_id IS NOT NULL);
