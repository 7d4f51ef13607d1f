-- A send whose answer was lost (a timeout, a dropped connection) may or may not have reached
-- the patient. Where the vendor can be asked (Tencent's status pull by number, which carries
-- the delivery id as SessionContext), the retry first asks, and sends again only if the vendor
-- has no report of the earlier attempt.
--
-- unsettled_since: when the unanswered attempt began (the database's clock at its claim);
--   NULL when no attempt's fate is open.
-- settle_pulls:    status pulls that failed for that attempt; after NOTIFY_TENCENT_SETTLE_PULLS
--   the retry is sent without an answer, so an unreachable status API cannot hold a message.
ALTER TABLE deliveries ADD COLUMN unsettled_since timestamptz,
                       ADD COLUMN settle_pulls integer NOT NULL DEFAULT 0;
