-- The trace of the request that placed the order: POST /orders and GET /orders/{id} return it,
-- so a person can open the order's whole journey in Jaeger.
ALTER TABLE orders ADD COLUMN trace_id text;
