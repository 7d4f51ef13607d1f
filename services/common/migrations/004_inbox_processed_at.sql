-- The inbox purge finds old rows by processed_at. A BRIN index: rows are appended in
-- roughly processed_at order, and it costs the per-event insert next to nothing.
CREATE INDEX inbox_processed_at ON inbox USING brin (processed_at);
