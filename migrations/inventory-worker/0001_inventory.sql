-- inventory-worker's own tables, in schema inventory (the shared outbox and
-- processed_messages tables come from migrations/shared).

-- Stock per SKU. A reservation moves units from available to reserved, for every item of an
-- order or for none (crates/inventory-worker/src/reservation.rs).
CREATE TABLE inventory (
    sku        text        PRIMARY KEY,
    available  bigint      NOT NULL CHECK (available >= 0),
    reserved   bigint      NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- A small demo catalogue. SCARCE-1 runs out quickly (rejections); FLAKY-1 fails its first
-- delivery and FAIL-1 every delivery (failure injection, crates/inventory-worker/src/failure.rs).
INSERT INTO inventory (sku, available) VALUES
    ('WIDGET-1', 1000),
    ('WIDGET-2', 1000),
    ('GADGET-1',  500),
    ('GIZMO-1',   250),
    ('SCARCE-1',   10),
    ('FLAKY-1',  1000),
    ('FAIL-1',   1000);
