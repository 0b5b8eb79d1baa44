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

-- Accounts and lots are updated by nearly every posting: a tenth of each page is left free, so
-- an update finds room beside the row it replaces (a HOT update, no index touched) until the page
-- is pruned. At the default (100) VACUUM left pages full, and the next update of each account
-- on one moved it to another page: a non-HOT update, five index entries and a lock record. (Not
-- more than a tenth: a page with less free space than its fillfactor asks is pruned on every
-- access, a WAL record per posting. New pages only; existing rows keep theirs until they move.)
ALTER TABLE accounts SET (fillfactor = 90);
ALTER TABLE credit_lots SET (fillfactor = 90);

-- Indexes a posting writes and no plan needs:
--  * transactions (user_id, seq DESC): a user's history is read one asset account at a time from
--    (user_id, asset_code, seq DESC), the page taken from their merge (wallet.services.wallets);
--  * idempotency_keys (created_at), read only by `wallet prune-idempotency` (created_at < a
--    cut-off, every row of it): a BRIN index, which a new row does not write while its block
--    range is being filled, instead of a B-tree entry per row.
DROP INDEX transactions_user_history;
DROP INDEX idempotency_keys_by_age;
CREATE INDEX idempotency_keys_by_age ON idempotency_keys USING brin (created_at);
