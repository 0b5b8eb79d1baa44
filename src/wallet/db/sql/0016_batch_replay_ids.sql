-- A posted batch's idempotency record keeps its transactions' ids, not a copy of its answer
-- (issue 18 item 2: store what a replay needs). The answer of a batch of 100 is some 70 KB of
-- jsonb, compressed and stored out of line with every batch; a replay renders it again from the
-- stored rows (wallet_transactions_document, as posted), as a single write's replay does: the
-- same document, byte for byte. Records written before keep their body and are served as stored.
ALTER TABLE idempotency_keys ADD COLUMN transaction_ids uuid[];

-- One way to keep a posted answer: a body, one transaction, or a batch's transactions (with a
-- body only to keep lots that name an expiry, as for one transaction: wallet_idempotency_store).
-- NOT VALID, then validated: the check reads the table without blocking writes to it.
ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_answer_kept;
ALTER TABLE idempotency_keys ADD CONSTRAINT idempotency_keys_answer_kept
    CHECK (response_body IS NOT NULL OR transaction_id IS NOT NULL OR transaction_ids IS NOT NULL) NOT VALID;
ALTER TABLE idempotency_keys ADD CONSTRAINT idempotency_keys_batch_ids
    CHECK (transaction_ids IS NULL
           OR (transaction_id IS NULL AND response_body IS NULL AND outcome = 'posted'
               AND cardinality(transaction_ids) >= 1 AND array_position(transaction_ids, NULL) IS NULL)) NOT VALID;
ALTER TABLE idempotency_keys VALIDATE CONSTRAINT idempotency_keys_answer_kept;
ALTER TABLE idempotency_keys VALIDATE CONSTRAINT idempotency_keys_batch_ids;
