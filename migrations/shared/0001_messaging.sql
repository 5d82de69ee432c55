-- The two tables every service needs to take part in messaging safely.
-- Applied into each service's own schema (see migrations/README.md).

-- Transactional outbox. A service never publishes to NATS in the middle of its business
-- transaction: it inserts the message here in the same transaction as the change it announces,
-- and the outbox relay (crates/shared/src/outbox.rs) publishes committed rows afterwards.
-- Either both the change and the message exist, or neither does.
CREATE TABLE outbox (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subject     text        NOT NULL,
    -- The logical message ID (CloudEvents ce-id): what consumers deduplicate on.
    message_id  uuid        NOT NULL,
    -- The broker's dedupe key (Nats-Msg-Id). Equal to message_id, except for replays, which
    -- keep the logical ID and need a fresh dedupe key.
    dedupe_id   text        NOT NULL,
    -- Headers to publish with (ce-* attributes, trace context captured at insert time).
    headers     jsonb       NOT NULL,
    payload     bytea       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- Set once JetStream acknowledged the publish. Sent rows are pruned after a retention period.
    sent_at     timestamptz
);

-- The relay's work list, kept small: only unsent rows are indexed.
CREATE INDEX outbox_unsent ON outbox (id) WHERE sent_at IS NULL;
CREATE INDEX outbox_sent_at ON outbox (sent_at) WHERE sent_at IS NOT NULL;

-- Idempotent consumer: the logical IDs of messages a consumer has applied. The ID is inserted
-- in the same transaction as the message's effects, so a redelivered or duplicated message
-- finds its ID here and changes nothing.
CREATE TABLE processed_messages (
    consumer     text        NOT NULL,
    message_id   uuid        NOT NULL,
    -- Which process applied it (INSTANCE_ID): shows how a shared consumer spreads the work.
    processed_by text        NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, message_id)
);
