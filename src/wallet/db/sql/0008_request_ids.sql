-- The request id (X-Request-ID, given by the caller or generated) is stored with the transaction a
-- request created, so a failed or surprising request can be traced from the logs to the ledger.
ALTER TABLE transactions
    ADD COLUMN request_id text CHECK (request_id ~ '^[A-Za-z0-9._:@/+=-]{1,128}$');

-- The posting functions gain a trailing p_request_id (default NULL). CREATE OR REPLACE cannot add
-- a parameter: the old signatures are dropped here and the new ones installed from
-- db/sql/functions right after, in the same `wallet migrate`.
DROP FUNCTION IF EXISTS wallet_post_transaction(bigint, text, text, text, text, bigint, text, jsonb);
DROP FUNCTION IF EXISTS wallet_capture_hold(bigint, text, uuid, bigint, text, jsonb);
DROP FUNCTION IF EXISTS wallet_reverse_transaction(bigint, text, uuid, bigint, text, jsonb, boolean);
DROP FUNCTION IF EXISTS wallet_post_transfer(bigint, text, text, text, text, bigint, bigint, text, jsonb);
DROP FUNCTION IF EXISTS wallet_post_batch(bigint, text, jsonb);
DROP FUNCTION IF EXISTS wallet_post_group(bigint[], text[], text[], text[], text[], bigint[], text[], jsonb[]);
