-- The window each exam channel runs on each day (PublishExamCapacity's start_time–end_time),
-- with or without referral places in it. A device may serve several channels of its
-- hospital, but only at different times; the slots cannot tell, as they are the referral
-- places only and the rest of the window is the hospital's own patients on the device.
CREATE TABLE exam_windows (
    channel_id   text    NOT NULL REFERENCES exam_channels ON DELETE CASCADE,
    day          date    NOT NULL,
    start_minute integer NOT NULL,
    end_minute   integer NOT NULL,
    PRIMARY KEY (channel_id, day)
);

-- Capacity published before this table: the span of its slots is the part of the window
-- known for sure (China is +08:00 all year, as in domain/calendar.py).
INSERT INTO exam_windows (channel_id, day, start_minute, end_minute)
SELECT channel_id, local_start::date,
       min(extract(hour FROM local_start) * 60 + extract(minute FROM local_start))::integer,
       max(extract(hour FROM local_start) * 60 + extract(minute FROM local_start) + length_minutes)::integer
  FROM (SELECT channel_id, length_minutes, start_at AT TIME ZONE INTERVAL '+08:00' AS local_start
          FROM slots WHERE channel_id IS NOT NULL) s
 GROUP BY channel_id, local_start::date;
