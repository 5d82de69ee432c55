-- Outbox rows the broker refuses for good, and pruning by age (crates/shared/src/outbox.rs and
-- crates/shared/src/retention.rs say why).

-- A row the broker refused with a permanent error (no stream for its subject, larger than the
-- stream's max_message_size, ...) is retried now and then, out of the way of the rows behind it,
-- and quarantined once it has been refused for OUTBOX_QUARANTINE_AFTER. A quarantined row is
-- kept, never sent, until a person fixes the cause and releases it:
--   UPDATE outbox SET quarantined_at = NULL, first_refused_at = NULL, retry_at = NULL WHERE id = …;
ALTER TABLE outbox
    -- Why the broker refused it, the last time.
    ADD COLUMN last_error       text,
    ADD COLUMN first_refused_at timestamptz,
    -- Not claimed again before this.
    ADD COLUMN retry_at         timestamptz,
    ADD COLUMN quarantined_at   timestamptz;

-- Pruning processed_messages by age needs to find the old rows without reading the table.
CREATE INDEX processed_messages_processed_at ON processed_messages (processed_at);
