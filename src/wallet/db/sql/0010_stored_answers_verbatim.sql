-- Answers get one documented key order from this revision on (wallet.api.documents), applied
-- as they are sent: a write's answer and its replays are put in it from the same stored jsonb,
-- so they stay the same bytes. A record stored before, though, was answered in jsonb's own
-- order, and its replay must keep those bytes: each is kept here as the JSON string of the
-- text it answered with (what `response_body::text` gave). A stored body that is a string is
-- such a record: the service answers its text, verbatim. Documents are always objects.
UPDATE idempotency_keys
   SET response_body = to_jsonb(response_body::text)
 WHERE jsonb_typeof(response_body) <> 'string';
