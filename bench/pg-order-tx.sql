-- One order row and its outbox row: the write a POST /api/orders makes, for
-- measuring PostgreSQL's own group commit with pgbench (docs/next-performance.md).
BEGIN;
INSERT INTO orders VALUES (gen_random_uuid(), 'u', 't', 'created', 0, 1);
INSERT INTO outbox (subject, payload, created_at) VALUES ('order.created', '{"id":"x","version":0}', 1);
COMMIT;
