-- Clinic quotas as a hard limit (true) or a fairness target only (false, the default).
ALTER TABLE reservation_policies ADD COLUMN quotas_hard boolean NOT NULL DEFAULT false;
