-- Early opening: reserved capacity opens to consortium clinics early_release_days before
-- the public release, which is public_release_days before the slot's day (0: the public
-- books on the day itself, so clinics book early_release_days ahead).
ALTER TABLE reservation_policies ADD COLUMN public_release_days integer NOT NULL DEFAULT 0
    CHECK (public_release_days >= 0);

-- Results an exam channel needs before the exam (KIDNEY_FUNCTION for contrast agents,
-- COAGULATION for an endoscopy with biopsy, ...), and whether it uses a contrast agent.
ALTER TABLE exam_channels ADD COLUMN required_results text[] NOT NULL DEFAULT '{}';
ALTER TABLE exam_channels ADD COLUMN contrast_agent boolean NOT NULL DEFAULT false;

-- A booked item's own instruction beyond the channel's (e.g. a missing kidney-function result).
ALTER TABLE booking_items ADD COLUMN instruction text NOT NULL DEFAULT '';

-- Reserved bed-nights returned to the general pool at the bed policy's deadline: the
-- engine and ListAvailability no longer offer them; GetUtilization counts them.
CREATE TABLE bed_night_releases (
    bed_id      text NOT NULL REFERENCES beds ON DELETE CASCADE,
    night       date NOT NULL,
    released_at timestamptz NOT NULL,
    PRIMARY KEY (bed_id, night)
);
