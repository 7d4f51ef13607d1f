-- Resources, reservation and bookings of the lead hospitals' reserved capacity.
-- No double booking is a property of these tables: a slot place and a bed-night each
-- have one row at most that holds them (unique keys below), whatever the application does.

CREATE TABLE hospitals (
    hospital_id text PRIMARY KEY,
    name        text NOT NULL DEFAULT ''
);

CREATE TABLE reservation_policies (
    hospital_id        text    NOT NULL,
    resource_type      text    NOT NULL CHECK (resource_type IN ('outpatient', 'exam', 'bed')),
    reserved_share     numeric NOT NULL CHECK (reserved_share BETWEEN 0 AND 1),
    expert_floor_share numeric NOT NULL DEFAULT 0 CHECK (expert_floor_share BETWEEN 0 AND 1),
    release_hours      integer NOT NULL CHECK (release_hours >= 0),
    early_release_days integer NOT NULL DEFAULT 14,
    clinic_quotas      jsonb   NOT NULL DEFAULT '{}'::jsonb,
    PRIMARY KEY (hospital_id, resource_type)
);

CREATE TABLE sessions (
    session_id     text PRIMARY KEY,
    hospital_id    text NOT NULL,
    department     text NOT NULL,
    doctor_id      text NOT NULL DEFAULT '',
    doctor_name    text NOT NULL DEFAULT '',
    title          text NOT NULL CHECK (title IN ('EXPERT', 'GENERAL')),
    day            date NOT NULL,
    half_day       text NOT NULL CHECK (half_day IN ('AM', 'PM')),
    total_places   integer NOT NULL,
    reserved_places integer NOT NULL,
    overflow_places integer NOT NULL,
    building       text NOT NULL DEFAULT '',
    floor          text NOT NULL DEFAULT '',
    room           text NOT NULL DEFAULT '',
    CHECK (reserved_places <= total_places)
);
CREATE INDEX sessions_hospital_day ON sessions (hospital_id, day);

CREATE TABLE exam_channels (
    channel_id        text PRIMARY KEY,
    hospital_id       text NOT NULL,
    modality          text NOT NULL,
    device_id         text NOT NULL DEFAULT '',
    building          text NOT NULL DEFAULT '',
    floor             text NOT NULL DEFAULT '',
    room              text NOT NULL DEFAULT '',
    slot_minutes      integer NOT NULL,
    preparation_days  integer NOT NULL DEFAULT 0,
    preparation       text NOT NULL DEFAULT '',
    contraindications text[] NOT NULL DEFAULT '{}'
);

-- One row per bookable time: an outpatient sub-slot of a session, or an exam slot.
CREATE TABLE slots (
    slot_id        text PRIMARY KEY,
    hospital_id    text NOT NULL,
    resource_type  text NOT NULL CHECK (resource_type IN ('outpatient', 'exam')),
    session_id     text REFERENCES sessions ON DELETE CASCADE,
    channel_id     text REFERENCES exam_channels ON DELETE CASCADE,
    start_at       timestamptz NOT NULL,
    length_minutes integer NOT NULL CHECK (length_minutes > 0),
    CHECK ((session_id IS NULL) <> (channel_id IS NULL))
);
CREATE INDEX slots_hospital_start ON slots (hospital_id, resource_type, start_at);

-- One row per place of a slot: the unit that a booking holds.
CREATE TABLE slot_places (
    slot_id     text    NOT NULL REFERENCES slots ON DELETE CASCADE,
    place_no    integer NOT NULL,
    pool        text    NOT NULL CHECK (pool IN ('reserved', 'overflow')),
    released_at timestamptz,
    PRIMARY KEY (slot_id, place_no)
);

CREATE TABLE wards (
    ward_id     text PRIMARY KEY,
    hospital_id text NOT NULL,
    department  text NOT NULL,
    name        text NOT NULL DEFAULT '',
    building    text NOT NULL DEFAULT '',
    floor       text NOT NULL DEFAULT '',
    min_age     integer,
    max_age     integer,
    specialisms text[] NOT NULL DEFAULT '{}'
);

CREATE TABLE rooms (
    room_id       text PRIMARY KEY,
    ward_id       text NOT NULL REFERENCES wards,
    label         text NOT NULL DEFAULT '',
    capacity      integer NOT NULL,
    gender_policy text NOT NULL CHECK (gender_policy IN ('MALE', 'FEMALE', 'SAME_GENDER', 'ANY')),
    equipment     text[] NOT NULL DEFAULT '{}'
);

CREATE TABLE beds (
    bed_id             text PRIMARY KEY,
    hospital_id        text NOT NULL,
    room_id            text NOT NULL REFERENCES rooms,
    label              text NOT NULL DEFAULT '',
    pool               text NOT NULL CHECK (pool IN ('reserved', 'overflow')),
    status             text NOT NULL DEFAULT 'FREE'
                       CHECK (status IN ('FREE', 'OCCUPIED', 'CLEANING', 'BLOCKED', 'HELD')),
    expected_discharge date,
    held_booking_id    text,
    updated_at         timestamptz NOT NULL DEFAULT now(),
    CHECK ((status = 'HELD') = (held_booking_id IS NOT NULL))
);
CREATE INDEX beds_hospital ON beds (hospital_id);

-- The referrals this service was asked to place, and where each one stands.
CREATE TABLE referrals (
    referral_id            text PRIMARY KEY,
    hospital_id            text NOT NULL,
    sending_institution_id text NOT NULL,
    snapshot               bytea NOT NULL,
    accepted_at            timestamptz NOT NULL,
    state                  text NOT NULL
                           CHECK (state IN ('WAITLISTED', 'SCHEDULED', 'CANCELLED', 'ARRIVED', 'NO_SHOW')),
    reason_code            text NOT NULL DEFAULT '',
    reason                 text NOT NULL DEFAULT '',
    updated_at             timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX referrals_waitlist ON referrals (hospital_id, accepted_at) WHERE state = 'WAITLISTED';

CREATE TABLE bookings (
    booking_id             text PRIMARY KEY,
    referral_id            text NOT NULL REFERENCES referrals,
    hospital_id            text NOT NULL,
    sending_institution_id text NOT NULL,
    state                  text NOT NULL
                           CHECK (state IN ('TENTATIVE', 'CONFIRMED', 'CANCELLED', 'ARRIVED', 'NO_SHOW')),
    -- The ReferralScheduled event: once relayed, the booking counts as sent to the patient.
    scheduled_event_id     uuid,
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now()
);
-- One live booking per referral.
CREATE UNIQUE INDEX bookings_one_live ON bookings (referral_id)
    WHERE state IN ('TENTATIVE', 'CONFIRMED', 'ARRIVED', 'NO_SHOW');
CREATE INDEX bookings_hospital ON bookings (hospital_id, state);

-- The items of a booking. A cancelled booking's items are deleted (their places free);
-- what they were stays in the events.
CREATE TABLE booking_items (
    item_id        text PRIMARY KEY,
    booking_id     text NOT NULL REFERENCES bookings ON DELETE CASCADE,
    need_id        text NOT NULL,
    engine_item_id text NOT NULL,
    kind           text NOT NULL CHECK (kind IN ('CONSULTATION', 'EXAM', 'ADMISSION')),
    slot_id        text,
    place_no       integer,
    bed_id         text REFERENCES beds,
    first_night    date,
    nights         integer,
    FOREIGN KEY (slot_id, place_no) REFERENCES slot_places,
    -- A slot place is held by one booking item only.
    CONSTRAINT booking_items_one_per_place UNIQUE (slot_id, place_no),
    CHECK ((kind = 'ADMISSION') = (bed_id IS NOT NULL)),
    CHECK ((kind = 'ADMISSION') = (slot_id IS NULL))
);
CREATE INDEX booking_items_booking ON booking_items (booking_id);

-- A bed-night is held by one booking item only.
CREATE TABLE bed_nights (
    bed_id   text NOT NULL REFERENCES beds,
    night    date NOT NULL,
    item_id  text NOT NULL REFERENCES booking_items ON DELETE CASCADE,
    gender   text,
    PRIMARY KEY (bed_id, night)
);
CREATE INDEX bed_nights_item ON bed_nights (item_id);
