-- Notify's own tables (schema notify). Deliveries and reminders are rows with a due
-- time: a dispatcher claims them with FOR UPDATE SKIP LOCKED, so nothing is lost
-- between the event's commit and the vendor call, and nothing waits in memory.

-- How to reach a patient. The mobile is stored only encrypted (AES-GCM, context
-- "mobile") with a keyed lookup hash; patient_id is already a keyed hash.
CREATE TABLE contacts (
    patient_id                 text PRIMARY KEY,
    mobile_ciphertext          text,
    mobile_hash                text,
    mobile_masked              text,
    wechat_openid              text,
    wechat_refused_at          timestamptz,
    channels                   text[]      NOT NULL DEFAULT '{}',
    consent                    boolean     NOT NULL DEFAULT true,
    opt_out_non_essential      boolean     NOT NULL DEFAULT false,
    urgent_ignores_quiet_hours boolean     NOT NULL DEFAULT true,
    preferences_set_by         text,
    updated_at                 timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX contacts_mobile_hash ON contacts (mobile_hash);

-- Scheduling events carry only the referral id: this is who its messages go to.
CREATE TABLE referral_routes (
    referral_id   text PRIMARY KEY,
    patient_id    text        NOT NULL,
    hospital_id   text        NOT NULL,
    clinic_id     text        NOT NULL,
    sender_id     text        NOT NULL,
    receiver_id   text        NOT NULL,
    department    text        NOT NULL DEFAULT '',
    urgent        boolean     NOT NULL DEFAULT false,
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX referral_routes_patient ON referral_routes (patient_id);

-- Booked items as the patient was told them, for cancellations and reminders.
CREATE TABLE appointments (
    booking_id   text        NOT NULL,
    item_id      text        NOT NULL,
    referral_id  text        NOT NULL,
    details      jsonb       NOT NULL,
    start_at     timestamptz NOT NULL,
    current      boolean     NOT NULL DEFAULT true,
    PRIMARY KEY (booking_id, item_id)
);

-- One message to one patient. The unique key makes an event's effect happen once
-- even if a handler ran twice (the inbox already prevents that).
CREATE TABLE notifications (
    id               uuid PRIMARY KEY,
    event_id         uuid        NOT NULL,
    recipient        text        NOT NULL,
    template         text        NOT NULL,
    part             text        NOT NULL DEFAULT '',
    template_version integer     NOT NULL,
    referral_id      text        NOT NULL,
    hospital_id      text        NOT NULL,
    clinic_id        text        NOT NULL,
    booking_id       text        NOT NULL DEFAULT '',
    essential        boolean     NOT NULL,
    urgent           boolean     NOT NULL,
    reminder         boolean     NOT NULL DEFAULT false,
    -- Rendering input: times, places, instructions; never a phone number or diagnosis.
    params           jsonb       NOT NULL,
    text             text        NOT NULL,
    channel_plan     text[]      NOT NULL DEFAULT '{}',
    skip_reason      text,
    expires_at       timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (event_id, recipient, template, part)
);
CREATE INDEX notifications_referral ON notifications (referral_id, created_at DESC);
CREATE INDEX notifications_recipient ON notifications (recipient, created_at DESC);
CREATE INDEX notifications_booking ON notifications (booking_id) WHERE reminder;

-- One attempt path through one channel: PENDING -> SENDING -> SENT -> DELIVERED | FAILED
-- (or CANCELLED, or FELL_BACK to the next channel's delivery).
CREATE TABLE deliveries (
    id                uuid PRIMARY KEY,
    notification_id   uuid        NOT NULL REFERENCES notifications (id),
    channel           text        NOT NULL,
    vendor            text        NOT NULL,
    status            text        NOT NULL,
    due_at            timestamptz NOT NULL,
    lease_until       timestamptz,
    attempts          integer     NOT NULL DEFAULT 0,
    vendor_code       text,
    vendor_message_id text,
    status_reason     text,
    -- Who the SMS went to (keyed hash), for the per-number caps.
    mobile_hash       text,
    sent_at           timestamptz,
    delivered_at      timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    CHECK (status IN ('PENDING','SENDING','SENT','DELIVERED','FAILED','CANCELLED','FELL_BACK'))
);
CREATE INDEX deliveries_due ON deliveries (due_at) WHERE status = 'PENDING';
CREATE INDEX deliveries_leased ON deliveries (lease_until) WHERE status = 'SENDING';
CREATE INDEX deliveries_notification ON deliveries (notification_id);
CREATE INDEX deliveries_vendor_message ON deliveries (vendor, vendor_message_id);
CREATE INDEX deliveries_caps ON deliveries (mobile_hash, sent_at) WHERE channel = 'sms';

-- Receipts already applied: a vendor's re-push changes nothing.
CREATE TABLE receipts (
    vendor            text        NOT NULL,
    vendor_message_id text        NOT NULL,
    phone_hash        text        NOT NULL,
    code              text        NOT NULL,
    delivered         boolean     NOT NULL,
    delivery_id       uuid,
    received_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (vendor, vendor_message_id, phone_hash, code)
);
