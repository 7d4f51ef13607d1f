-- Membership events (referral.v1.InstitutionUpserted): when each institution was last
-- published; NULL or old ones are (re)published by the membership job.
ALTER TABLE institutions ADD COLUMN membership_published_at timestamptz;

-- Scheduling-stage targets (accepted -> scheduled), by urgency, in hours.
ALTER TABLE consortiums ADD COLUMN emergency_scheduling_hours integer NOT NULL DEFAULT 4;
ALTER TABLE consortiums ADD COLUMN urgent_scheduling_hours    integer NOT NULL DEFAULT 48;
ALTER TABLE consortiums ADD COLUMN routine_scheduling_hours   integer NOT NULL DEFAULT 168;

-- Change-log retention: every change up to this sequence has been purged, so a watch
-- cursor below it cannot be resumed without gaps.
ALTER TABLE consortiums ADD COLUMN changes_purged_through bigint NOT NULL DEFAULT 0;
CREATE INDEX referral_changes_age ON referral_changes (consortium_id, created_at);
