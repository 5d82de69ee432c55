-- What kind of failure made each dead letter (the review console lists and filters by it):
--   exhausted     its deliveries ran out (or a consumer gave up after its last attempt);
--   gone          its deliveries ran out and the original had already left the stream;
--   poison        a consumer could not read it at all;
--   unrecognised  something in orders_unprocessed that capture could not interpret.
-- Capture has always known the kind (crates/dlq-service/src/capture.rs) but only counted it
-- in a metric. Rows recorded before this migration get it from their reason, which capture
-- wrote in a fixed form for each kind.
ALTER TABLE dead_letters ADD COLUMN kind text;

UPDATE dead_letters SET kind = CASE
    WHEN reason LIKE 'unprocessable message:%' THEN 'poison'
    WHEN reason LIKE 'original message already gone%' THEN 'gone'
    WHEN reason LIKE 'delivery limit reached%' THEN 'exhausted'
    ELSE 'unrecognised'
END;

ALTER TABLE dead_letters ALTER COLUMN kind SET NOT NULL,
    ADD CONSTRAINT dead_letters_kind CHECK (kind IN ('exhausted', 'gone', 'poison', 'unrecognised'));
