-- Re-installed by every `wallet migrate` (after the versioned migrations); see wallet.db.migrate.
-- Reference data: assets with their system accounts, users with one account per asset. Used by
-- `wallet seed`, seed.sql and the HTTP API alike, so all give one state.

CREATE OR REPLACE FUNCTION wallet_ensure_asset(p_code text, p_name text, p_scale smallint) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO asset_types (code, name, scale) VALUES (p_code, p_name, p_scale)
        ON CONFLICT (code) DO NOTHING;
    INSERT INTO accounts (kind, system_code, asset_code)
        SELECT 'system', s.code, p_code FROM unnest(wallet_rule_system_codes()) AS s(code)
        ON CONFLICT DO NOTHING;
    INSERT INTO accounts (kind, user_id, asset_code)
        SELECT 'user', u.id, p_code FROM users u
        ON CONFLICT DO NOTHING;
$$;

-- Creates the user and one account per asset. Returns true when the user was created now.
CREATE OR REPLACE FUNCTION wallet_ensure_user(p_user_id text, p_name text) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_created boolean;
BEGIN
    INSERT INTO users (id, name) VALUES (p_user_id, p_name) ON CONFLICT (id) DO NOTHING;
    v_created := FOUND;
    INSERT INTO accounts (kind, user_id, asset_code)
        SELECT 'user', p_user_id, a.code FROM asset_types a
        ON CONFLICT DO NOTHING;
    RETURN v_created;
END $$;
