-- Consortium membership as the referral service publishes it (referral.v1.InstitutionUpserted),
-- kept here for authorization only (services/common/membership.py).
CREATE TABLE memberships (
    institution_id        text             PRIMARY KEY,
    consortium_id         text             NOT NULL,
    level                 smallint         NOT NULL,
    lead_hospital_id      text             NOT NULL DEFAULT '',
    parent_institution_id text             NOT NULL DEFAULT '',
    distance_km           double precision NOT NULL DEFAULT 0,
    -- When the referral service made the change (the event's occur time): newest wins.
    occurred_at           timestamptz      NOT NULL,
    updated_at            timestamptz      NOT NULL DEFAULT now()
);
CREATE INDEX memberships_consortium ON memberships (consortium_id, institution_id);

-- Rebooking after a no-show (referral.v1 RebookReferral): the no-show booking stays as it
-- was (its places counted as used) but no longer blocks a fresh placement.
ALTER TABLE bookings ADD COLUMN superseded_at timestamptz;
DROP INDEX bookings_one_live;
CREATE UNIQUE INDEX bookings_one_live ON bookings (referral_id)
    WHERE state IN ('TENTATIVE', 'CONFIRMED', 'ARRIVED', 'NO_SHOW') AND superseded_at IS NULL;
