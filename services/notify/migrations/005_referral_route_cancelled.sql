-- The referral was cancelled (ReferralCancelled; a final state). Its patient was told that
-- its appointments went with it, so the booking cancellation that scheduling sends next
-- tells the patient nothing more.
--
-- Referrals cancelled before this column stay false; their bookings' cancellations have
-- long been handled, bar those in flight during the upgrade.
ALTER TABLE referral_routes ADD COLUMN cancelled boolean NOT NULL DEFAULT false;
