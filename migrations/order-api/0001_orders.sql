-- order-api's own tables, in schema order_api (the shared outbox and processed_messages tables
-- come from migrations/shared).

-- Orders as the API accepted them, and their status as projected from order_events.
CREATE TABLE orders (
    id              uuid        PRIMARY KEY,
    customer_id     text        NOT NULL,
    -- [{"sku": "WIDGET-1", "quantity": 2}, …] exactly as validated.
    items           jsonb       NOT NULL,
    -- pending until an outcome event arrives (crates/order-api/src/projection.rs).
    status          text        NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'reserved', 'rejected', 'dead_lettered')),
    -- Why the order was rejected or dead-lettered.
    reason          text,
    -- The client's Idempotency-Key, if it sent one. A second request with the same key finds
    -- this row instead of creating an order (NULLs never conflict: keyless orders are all new).
    idempotency_key text        UNIQUE,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL
);
