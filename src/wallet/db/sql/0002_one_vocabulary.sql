-- One vocabulary: the database speaks in catalogue outcomes (`posted`, `insufficient_funds`, ...),
-- never in HTTP statuses, and reads every rule from the generated `wallet_rule_*` functions
-- (wallet.db.rules, installed before this runs) instead of repeating literals.
--
-- The posting functions themselves now live in db/sql/functions/*.sql, re-installed by every
-- `wallet migrate`; this migration drops the old definitions whose signatures change.

-- Stored outcomes: the catalogue code instead of the HTTP status. Rows written by the previous
-- version are converted: a stored 201 was `posted`, anything else carries its code in its body.
-- Their bodies are untouched, so replays stay byte-for-byte what was first sent.
ALTER TABLE idempotency_keys ADD COLUMN outcome text;
UPDATE idempotency_keys
   SET outcome = CASE WHEN status_code BETWEEN 200 AND 299 THEN 'posted'
                      ELSE response_body -> 'error' ->> 'code' END;
ALTER TABLE idempotency_keys
    ALTER COLUMN outcome SET NOT NULL,
    ADD CONSTRAINT idempotency_keys_outcome_known CHECK (outcome = ANY (wallet_rule_outcomes())),
    DROP COLUMN status_code;

-- Constraints that repeated rules now read them.
ALTER TABLE api_keys
    DROP CONSTRAINT api_keys_scopes_check,
    ADD CONSTRAINT api_keys_scopes_known CHECK (cardinality(scopes) > 0 AND scopes <@ wallet_rule_scopes());
ALTER TABLE transactions
    DROP CONSTRAINT transactions_type_check,
    ADD CONSTRAINT transactions_type_known CHECK (type = ANY (wallet_rule_transaction_types())),
    DROP CONSTRAINT transactions_amount_minor_check,
    ADD CONSTRAINT transactions_amount_in_range
        CHECK (amount_minor > 0 AND amount_minor <= wallet_rule_amount_minor_ceiling()),
    DROP CONSTRAINT transactions_idempotency_key_check,
    ADD CONSTRAINT transactions_idempotency_key_length
        CHECK (length(idempotency_key) BETWEEN 1 AND wallet_rule_idempotency_key_max_chars()),
    DROP CONSTRAINT transactions_description_check,
    ADD CONSTRAINT transactions_description_length
        CHECK (length(description) <= wallet_rule_description_max_chars()),
    DROP CONSTRAINT transactions_metadata_check,
    ADD CONSTRAINT transactions_metadata_object
        CHECK (jsonb_typeof(metadata) = 'object' AND pg_column_size(metadata) <= wallet_rule_metadata_max_bytes());
ALTER TABLE idempotency_keys
    DROP CONSTRAINT idempotency_keys_key_check,
    ADD CONSTRAINT idempotency_keys_key_length
        CHECK (length(key) BETWEEN 1 AND wallet_rule_idempotency_key_max_chars());

-- Replaced by db/sql/functions/*.sql (new signatures, or rules read from wallet_rule_*).
DROP FUNCTION wallet_post_transaction(bigint, text, text, text, text, bigint, text, jsonb);
DROP FUNCTION wallet_post_batch(bigint, text, jsonb);
DROP FUNCTION wallet_idempotency_lookup(bigint, text, bytea);
DROP FUNCTION wallet_batch_operations(jsonb);
DROP FUNCTION wallet_ensure_asset(text, text, smallint);
DROP FUNCTION wallet_system_account_for(text);
DROP FUNCTION wallet_system_codes();
