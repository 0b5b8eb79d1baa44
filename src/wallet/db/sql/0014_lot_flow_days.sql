-- The liability report's running totals (issue 20 item 5: the report read every lot movement
-- ever written, 3-5 s at 1 M transactions, past the statement timeout twice).
--
-- A background task (wallet_roll_lot_flows, every WALLET_LOT_FLOW_ROLL_INTERVAL_MS) adds the lot
-- movements of settled transactions, in seq order, to one total per UTC day of the
-- transaction's created_at, asset, lot origin and transaction type. The report sums the days a
-- window covers whole and reads, movement by movement, only the transactions of the days it cuts
-- and those not rolled yet: what it answers does not depend on how far the roll-up has come.
-- Nothing on the posting path writes here: the totals are kept off the hot rows (one row per
-- day and kind would serialise every posting of that day).

-- How far the roll-up has come: every transaction with seq <= through_seq is in the totals.
CREATE TABLE lot_flow_rollup (
    one         boolean PRIMARY KEY DEFAULT true CHECK (one),
    through_seq bigint NOT NULL CHECK (through_seq >= 0)
);
INSERT INTO lot_flow_rollup (through_seq) VALUES (0);

-- Per UTC day: the range of seq and of created_at of the rolled transactions of that day (a
-- window that cuts the day reads those transactions again, found by seq).
CREATE TABLE lot_flow_days (
    day       date PRIMARY KEY,
    first_seq bigint NOT NULL,
    last_seq  bigint NOT NULL CHECK (last_seq >= first_seq),
    first_at  timestamptz NOT NULL,
    last_at   timestamptz NOT NULL CHECK (last_at >= first_at)
);

-- Per UTC day, asset, lot origin and transaction type: the sum of the lot movements (signed:
-- positive fills, negative draws) of the rolled transactions of that day.
CREATE TABLE lot_flow_totals (
    day          date NOT NULL REFERENCES lot_flow_days (day),
    asset_code   text NOT NULL,
    origin       text NOT NULL CHECK (origin IN ('purchased', 'granted')),
    type         text NOT NULL,
    amount_minor bigint NOT NULL,
    PRIMARY KEY (day, asset_code, origin, type)
);
