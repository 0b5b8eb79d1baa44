-- Re-installed by every `wallet migrate` (after the versioned migrations); see wallet.db.migrate.
-- Rate limits: one token bucket per client (the id of its first API key: a rotated key's secret
-- draws from its predecessor's bucket), shared by every worker and instance on this database.

-- The bucket's tokens after refilling at p_rps per second since it was last seen, capped at the
-- burst. Negative elapsed time (a statement that started earlier but got the row later) counts 0.
CREATE OR REPLACE FUNCTION wallet_bucket_refill(
    p_tokens double precision, p_refreshed_at timestamptz, p_now timestamptz,
    p_rps double precision, p_burst integer)
RETURNS double precision LANGUAGE sql IMMUTABLE AS $$
    SELECT least(p_burst::double precision,
                 p_tokens + greatest(0, extract(epoch FROM p_now - p_refreshed_at)) * p_rps)
$$;

-- Takes one token from the client's bucket (created full; p_api_key_id is the client's id). Returns 0 when the request may go
-- through, otherwise the seconds until a token will be there. One statement and one row lock per
-- request; the table is UNLOGGED, so it costs no WAL flush.
CREATE OR REPLACE FUNCTION wallet_rate_limit_take(
    p_api_key_id bigint, p_rps double precision, p_burst integer)
RETURNS double precision LANGUAGE sql AS $$
    INSERT INTO rate_limit_buckets AS b (api_key_id, tokens, refreshed_at, allowed)
        VALUES (p_api_key_id, p_burst - 1, statement_timestamp(), true)
    ON CONFLICT (api_key_id) DO UPDATE SET
        tokens = wallet_bucket_refill(b.tokens, b.refreshed_at, statement_timestamp(), p_rps, p_burst)
                 - CASE WHEN wallet_bucket_refill(b.tokens, b.refreshed_at, statement_timestamp(), p_rps, p_burst) >= 1
                        THEN 1 ELSE 0 END,
        allowed = wallet_bucket_refill(b.tokens, b.refreshed_at, statement_timestamp(), p_rps, p_burst) >= 1,
        refreshed_at = greatest(b.refreshed_at, statement_timestamp())
    RETURNING CASE WHEN b.allowed THEN 0 ELSE (1 - b.tokens) / p_rps END
$$;
