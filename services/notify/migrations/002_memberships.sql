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
