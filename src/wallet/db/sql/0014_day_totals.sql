-- Per-day totals for the reports (issue 20 item 5: the liability report read every lot movement
-- ever written, 3-5 s at 1 M transactions, past the statement timeout twice; the daily volume
-- read every entry of its days).
--
-- A background task (wallet_roll_up, every WALLET_ROLLUP_INTERVAL_MS) adds settled transactions,
-- in seq order, to one row per UTC day of the transaction's created_at and kind. A report sums the
-- rows it can and reads the rest (the transactions of a day its window cuts, those not rolled up
-- yet) row by row: what it answers does not depend on how far the roll-up has come. Nothing on
-- the posting path writes here (one row per day and kind written by every posting would
-- serialise the day's postings on it).

-- How far the roll-up has come: every transaction with seq <= through_seq is in the totals.
CREATE TABLE rollup_checkpoint (
    one         boolean PRIMARY KEY DEFAULT true CHECK (one),
    through_seq bigint NOT NULL CHECK (through_seq >= 0)
);
INSERT INTO rollup_checkpoint (through_seq) VALUES (0);

-- Per UTC day: the range of seq and of created_at of its rolled-up transactions (a window that
-- cuts the day reads those transactions again, found by seq).
CREATE TABLE rollup_days (
    day       date PRIMARY KEY,
    first_seq bigint NOT NULL,
    last_seq  bigint NOT NULL CHECK (last_seq >= first_seq),
    first_at  timestamptz NOT NULL,
    last_at   timestamptz NOT NULL CHECK (last_at >= first_at)
);

-- Per UTC day, asset, lot origin and transaction type: the sum of the lot movements (signed:
-- positive fills, negative draws) of the day's rolled-up transactions. For the liability report.
CREATE TABLE lot_flow_totals (
    day          date NOT NULL REFERENCES rollup_days (day),
    asset_code   text NOT NULL,
    origin       text NOT NULL CHECK (origin IN ('purchased', 'granted')),
    type         text NOT NULL,
    amount_minor bigint NOT NULL,
    PRIMARY KEY (day, asset_code, origin, type)
);

-- Per UTC day and asset: what the day's rolled-up transactions credited to and debited from user
-- accounts, and how many touched one. For the daily volume.
CREATE TABLE volume_totals (
    day            date NOT NULL REFERENCES rollup_days (day),
    asset_code     text NOT NULL,
    credited_minor bigint NOT NULL CHECK (credited_minor >= 0),
    debited_minor  bigint NOT NULL CHECK (debited_minor >= 0),
    transactions   bigint NOT NULL CHECK (transactions >= 0),
    PRIMARY KEY (day, asset_code)
);
