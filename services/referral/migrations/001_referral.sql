-- The referral service's schema: membership, catalogue, referrals and their history,
-- the change log that WatchReferrals replays, episodes, chronic-care colours.

CREATE TABLE consortiums (
    consortium_id              text        PRIMARY KEY,
    display_name               text        NOT NULL,
    emergency_acceptance_hours integer     NOT NULL DEFAULT 2,
    urgent_acceptance_hours    integer     NOT NULL DEFAULT 24,
    routine_acceptance_hours   integer     NOT NULL DEFAULT 72,
    -- exam type -> validity window in days (结果互认)
    exam_validity              jsonb       NOT NULL DEFAULT '{}'::jsonb,
    -- Last change-log sequence of this consortium; bumped under the row lock so that
    -- sequence order equals commit order (a watcher never skips a late committer).
    change_seq                 bigint      NOT NULL DEFAULT 0,
    created_at                 timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE institutions (
    institution_id        text             PRIMARY KEY,
    consortium_id         text             NOT NULL REFERENCES consortiums,
    display_name          text             NOT NULL,
    level                 smallint         NOT NULL CHECK (level BETWEEN 1 AND 3),
    lead_hospital_id      text             NOT NULL,
    parent_institution_id text             NOT NULL DEFAULT '',
    distance_km           double precision NOT NULL DEFAULT 0,
    address               text             NOT NULL DEFAULT '',
    created_at            timestamptz      NOT NULL DEFAULT now()
);
CREATE INDEX institutions_consortium ON institutions (consortium_id, institution_id);

CREATE TABLE disease_catalogues (
    consortium_id text        NOT NULL REFERENCES consortiums,
    version       integer     NOT NULL,
    description   text        NOT NULL DEFAULT '',
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consortium_id, version)
);

CREATE TABLE disease_entries (
    consortium_id text     NOT NULL,
    version       integer  NOT NULL,
    code          text     NOT NULL,
    display_name  text     NOT NULL,
    level         smallint NOT NULL CHECK (level BETWEEN 1 AND 3),
    PRIMARY KEY (consortium_id, version, code),
    FOREIGN KEY (consortium_id, version) REFERENCES disease_catalogues
);

-- Referrals of one illness (billing continuity).
CREATE TABLE episodes (
    episode_id          text        PRIMARY KEY,
    consortium_id       text        NOT NULL,
    patient_id          text        NOT NULL,
    icd_category        text        NOT NULL,
    deductible_paid_fen bigint      NOT NULL DEFAULT 0 CHECK (deductible_paid_fen >= 0),
    created_at          timestamptz NOT NULL DEFAULT now(),
    last_activity_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX episodes_patient ON episodes (consortium_id, patient_id, icd_category, last_activity_at DESC);

CREATE TABLE referrals (
    referral_id              text        PRIMARY KEY,
    consortium_id            text        NOT NULL,
    direction                smallint    NOT NULL,
    state                    smallint    NOT NULL,
    sending_institution_id   text        NOT NULL,
    receiving_institution_id text        NOT NULL,
    hospital_id              text        NOT NULL,
    urgency                  smallint    NOT NULL,
    department               text        NOT NULL,
    diagnosis_code           text        NOT NULL,
    patient_id               text        NOT NULL,
    episode_id               text        NOT NULL,
    request_id               text        NOT NULL,
    created_at               timestamptz NOT NULL,
    updated_at               timestamptz NOT NULL,
    submitted_at             timestamptz,
    accepted_at              timestamptz,
    scheduled_at             timestamptz,
    version                  integer     NOT NULL DEFAULT 1,
    -- The rest of the aggregate (needs, results, consent, masked patient, ciphertexts).
    body                     jsonb       NOT NULL,
    -- Idempotent create, scoped to the caller's institution.
    UNIQUE (sending_institution_id, request_id)
);
CREATE INDEX referrals_sender ON referrals (sending_institution_id, created_at DESC, referral_id DESC);
CREATE INDEX referrals_receiver ON referrals (receiving_institution_id, created_at DESC, referral_id DESC);
CREATE INDEX referrals_consortium ON referrals (consortium_id, created_at DESC, referral_id DESC);
CREATE INDEX referrals_waiting ON referrals (submitted_at) WHERE state = 2;

CREATE TABLE referral_transitions (
    id                   bigserial   PRIMARY KEY,
    referral_id          text        NOT NULL REFERENCES referrals,
    from_state           smallint,
    to_state             smallint    NOT NULL,
    actor                text        NOT NULL,
    actor_institution_id text        NOT NULL,
    reason               text        NOT NULL DEFAULT '',
    at                   timestamptz NOT NULL
);
CREATE INDEX referral_transitions_referral ON referral_transitions (referral_id, id);

-- What WatchReferrals replays: one row per change, the referral as it was after it.
CREATE TABLE referral_changes (
    consortium_id            text        NOT NULL,
    seq                      bigint      NOT NULL,
    referral_id              text        NOT NULL,
    sending_institution_id   text        NOT NULL,
    receiving_institution_id text        NOT NULL,
    payload                  bytea       NOT NULL,
    created_at               timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consortium_id, seq)
);

CREATE FUNCTION referral_changes_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(TG_TABLE_SCHEMA || '_referral_changes', '');
    RETURN NULL;
END $$;
CREATE TRIGGER referral_changes_notify AFTER INSERT ON referral_changes
    FOR EACH STATEMENT EXECUTE FUNCTION referral_changes_notify();

-- SLA breaches already reported, once per referral and stage.
CREATE TABLE sla_breaches (
    referral_id text        NOT NULL,
    stage       text        NOT NULL,
    breached_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (referral_id, stage)
);

CREATE TABLE chronic_care (
    consortium_id           text        NOT NULL,
    patient_id              text        NOT NULL,
    condition_code          text        NOT NULL,
    colour                  smallint    NOT NULL,
    managing_institution_id text        NOT NULL,
    updated_at              timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consortium_id, patient_id, condition_code)
);
