-- Seeds the demo data through psql, equal in effect to `wallet seed`:
--   psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -f seed.sql
-- The schema must exist first (`wallet migrate`). Safe to run any number of times: assets and
-- users are inserted only when missing, and the initial balances are bonus transactions posted
-- under fixed idempotency keys, so a second run replays instead of paying twice.
\set ON_ERROR_STOP on

DO $$
BEGIN
    IF to_regproc('wallet_post_transaction') IS NULL THEN
        RAISE EXCEPTION 'the wallet schema is missing: run `wallet migrate` first';
    END IF;
END $$;

BEGIN;
SELECT wallet_ensure_asset('GOLD_COINS', 'Gold Coins', 0::smallint);
SELECT wallet_ensure_asset('DIAMONDS', 'Diamonds', 0::smallint);
SELECT wallet_ensure_asset('LOYALTY_POINTS', 'Loyalty Points', 0::smallint);

-- The owner of seed transactions: revoked from birth, so no one can authenticate as it.
INSERT INTO api_keys (name, key_prefix, key_sha256, scopes, revoked_at)
VALUES ('wallet-seed', 'internal',
        sha256(convert_to('wallet-seed (internal, cannot authenticate)', 'UTF8')), '{admin}', now())
ON CONFLICT (key_sha256) DO NOTHING;

SELECT wallet_ensure_user('user_001', 'Alice');
SELECT wallet_ensure_user('user_002', 'Bob');
COMMIT;

SELECT b.key, p.outcome
FROM (VALUES
        ('user_001', 'GOLD_COINS', 1000), ('user_001', 'DIAMONDS', 50), ('user_001', 'LOYALTY_POINTS', 200),
        ('user_002', 'GOLD_COINS', 500),  ('user_002', 'DIAMONDS', 20), ('user_002', 'LOYALTY_POINTS', 100)
     ) AS s(user_id, asset_code, amount_minor)
CROSS JOIN LATERAL (SELECT 'seed:' || s.user_id || ':' || s.asset_code AS key) AS b
CROSS JOIN LATERAL wallet_post_transaction(
    (SELECT id FROM api_keys WHERE key_sha256 = sha256(convert_to('wallet-seed (internal, cannot authenticate)', 'UTF8'))),
    b.key, 'bonus', s.user_id, s.asset_code, s.amount_minor::bigint, 'Initial balance (seed)', '{}'::jsonb) AS p;
