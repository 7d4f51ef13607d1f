-- Why the caller needed the data, for calls that require a reason (e.g. revealing a
-- patient's full identifiers).
ALTER TABLE audit_log ADD COLUMN reason text NOT NULL DEFAULT '';
