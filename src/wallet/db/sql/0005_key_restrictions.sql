-- Least privilege and operability of API keys.
--
-- client_key_id: the first key of a client. A rotated key shares it with the key it replaces,
--   and idempotency records (and the api_key_id of what the client posts) are kept under it, so
--   a retry across a rotation finds the first attempt's outcome. NULL means the key is its own
--   client's first key.
-- expires_at: the end of a rotation's overlap for the replaced key (NULL: no end).
-- last_used_at: written in the background from each worker's memory (never on the request path),
--   so it is accurate to WALLET_KEY_USAGE_FLUSH_MS.
-- allowed_asset_codes / allowed_operations / max_amount_minor: restrictions on top of the scopes
--   (NULL: none). rate_limit_rps / rate_limit_burst: per-key overrides of the defaults
--   (NULL: the default; 0 rps: no limit for this key).
ALTER TABLE api_keys
    ADD COLUMN client_key_id      bigint REFERENCES api_keys (id),
    ADD COLUMN expires_at         timestamptz,
    ADD COLUMN last_used_at       timestamptz,
    ADD COLUMN allowed_asset_codes text[] CHECK (cardinality(allowed_asset_codes) > 0),
    ADD COLUMN allowed_operations text[] CHECK (cardinality(allowed_operations) > 0
                                                AND allowed_operations <@ wallet_rule_key_operations()),
    ADD COLUMN max_amount_minor   bigint CHECK (max_amount_minor > 0),
    ADD COLUMN rate_limit_rps     double precision CHECK (rate_limit_rps >= 0 AND rate_limit_rps <= 1000000),
    ADD COLUMN rate_limit_burst   integer CHECK (rate_limit_burst >= 1 AND rate_limit_burst <= 1000000);
CREATE INDEX api_keys_by_prefix ON api_keys (key_prefix);

-- One token bucket per key for the PostgreSQL rate-limit store. UNLOGGED: a bucket is not worth a
-- WAL write per request, and after a crash every bucket starting full again is harmless.
CREATE UNLOGGED TABLE rate_limit_buckets (
    api_key_id   bigint PRIMARY KEY,
    tokens       double precision NOT NULL,
    refreshed_at timestamptz NOT NULL,
    allowed      boolean NOT NULL  -- whether the last request it saw was let through
);
