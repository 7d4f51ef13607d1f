-- Who set the patient's WeChat openid through SetContactPreferences ("institution/subject", as
-- preferences_set_by); NULL while the openid on file is the one the referral events carry.
-- The same rule as mobile_set_by (004): an openid set through preferences wins over the
-- referral snapshots' until preferences set another or leave it out, and clearing an idle
-- contact clears this with the openid.
--
-- Rows from before this column stay NULL: who set their openid is not known, and the openid
-- on file is the one the last referral event carried (or the desk's, until the next event).
ALTER TABLE contacts ADD COLUMN wechat_openid_set_by text;
