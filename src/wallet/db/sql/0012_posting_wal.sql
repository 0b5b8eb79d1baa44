-- Fewer WAL bytes per posting (issue 18 item 2; docs/PERFORMANCE.md has the measurements).
--
-- The two guards on rows a posting updates (a user's available balance, a lot's identity) run
-- after the update instead of before it. A BEFORE UPDATE row trigger makes PostgreSQL lock the
-- row before it updates it (heap_lock_tuple, for the trigger's view of a concurrent update),
-- and that lock is a WAL record of its own, 54 bytes, for every account and every lot a
-- posting changes, even when the trigger's WHEN clause is false. An AFTER row trigger sees the
-- same OLD and NEW and raises the same error, which aborts the same statement; the updates it
-- guards are plain updates, HOT as before.
DROP TRIGGER accounts_available_not_negative ON accounts;
CREATE TRIGGER accounts_available_not_negative AFTER UPDATE ON accounts FOR EACH ROW
    WHEN (NEW.held_minor > NEW.balance_minor
          AND NEW.balance_minor - NEW.held_minor < OLD.balance_minor - OLD.held_minor)
    EXECUTE FUNCTION wallet_accounts_guard_available();

DROP TRIGGER credit_lots_identity_fixed ON credit_lots;
CREATE TRIGGER credit_lots_identity_fixed AFTER UPDATE ON credit_lots FOR EACH ROW
    WHEN (NEW.id <> OLD.id OR NEW.account_id <> OLD.account_id OR NEW.origin <> OLD.origin
          OR NEW.expires_at IS DISTINCT FROM OLD.expires_at OR NEW.created_at <> OLD.created_at)
    EXECUTE FUNCTION wallet_reject_change();
