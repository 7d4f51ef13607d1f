-- The booking items whose messages an instructions message ("就诊须知", template
-- `instructions`) completes: those messages carried an instruction cut to fit a vendor's
-- variable, with a pointer to it. A later event that supersedes a booking's waiting messages
-- keeps such a message while any item it covers is kept, since the kept messages point to it.
-- Every other notification covers nothing.
ALTER TABLE notifications ADD COLUMN covers text[] NOT NULL DEFAULT '{}';
