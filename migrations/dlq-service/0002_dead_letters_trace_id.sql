-- The trace of the message that died (from its traceparent header): the order's whole story,
-- failed attempts included, is one trace in Jaeger.
ALTER TABLE dead_letters ADD COLUMN trace_id text;
