-- User ids that read as a path ("." , "..") or that equal a system account's code are refused,
-- by the database too. NOT VALID: rows created before are left as they are (checked from now on).
ALTER TABLE users ADD CONSTRAINT users_id_not_reserved
    CHECK (id !~ '^\.+$' AND NOT (id = ANY (wallet_rule_system_codes()))) NOT VALID;
