-- Which claim holds a SENDING delivery. Every claim (the first, and each one taken over a
-- lapsed lease) sets a new value, and the dispatcher records a send's outcome only under
-- the claim it made: a sender slower than its lease cannot overwrite the outcome of the
-- replica that claimed the delivery after it.
--
-- Rows claimed before this column stay NULL until claimed again; writes of the release
-- that claimed them do not look at it.
ALTER TABLE deliveries ADD COLUMN claim uuid;
