-- dlq-service's own tables, in schema dlq (the shared outbox and processed_messages tables
-- come from migrations/shared).

-- Messages that could not be processed, one row each, for a person to review, then replay or
-- discard. Filled from the orders_unprocessed stream (crates/dlq-service/src/capture.rs).
CREATE TABLE dead_letters (
    -- UUIDv7: time-ordered, so "newest first" is "id descending" and pages are stable.
    id                uuid        PRIMARY KEY,
    -- Where the message lived: for an exhausted message, its stream and sequence; this pair is
    -- what makes capture idempotent (an advisory delivered twice finds its row).
    source_stream     text        NOT NULL,
    source_sequence   bigint      NOT NULL,
    -- The original subject (orders.new); NULL when the original was already gone.
    subject           text,
    -- The logical message ID (ce-id), reused by a replay so the worker's idempotency holds.
    message_id        uuid,
    order_id          uuid,
    -- The payload exactly as it was (NULL when the original was gone), and as JSON when it
    -- parses as JSON.
    payload           bytea,
    payload_json      jsonb,
    -- The original's headers (ce-* attributes, trace context), name → value.
    headers           jsonb       NOT NULL DEFAULT '{}',
    consumer          text,
    deliveries        integer,
    -- Why it is here (delivery limit reached, unreadable payload, original gone).
    reason            text        NOT NULL,
    -- The consumer's error on its last attempt, when it said.
    last_error        text,
    -- When the original was first stored, and when it was given up on.
    first_seen_at     timestamptz,
    failed_at         timestamptz NOT NULL,
    status            text        NOT NULL DEFAULT 'pending'
                      CHECK (status IN ('pending', 'replayed', 'discarded')),
    -- Who changed the status, and why.
    status_changed_by text,
    status_reason     text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (source_stream, source_sequence)
);

CREATE INDEX dead_letters_by_status ON dead_letters (status, id DESC);

-- The last error a consumer reported for a message it was about to give up on. It usually
-- arrives just before the MAX_DELIVERIES advisory; kept here until the advisory is captured.
CREATE TABLE last_errors (
    source_stream   text        NOT NULL,
    source_sequence bigint      NOT NULL,
    consumer        text        NOT NULL,
    error           text        NOT NULL,
    noted_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source_stream, source_sequence)
);
