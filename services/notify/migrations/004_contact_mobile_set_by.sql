-- Who set the patient's mobile through SetContactPreferences ("institution/subject", as
-- preferences_set_by); NULL while the number on file is the one the referral events carry.
-- A number set through preferences wins over the referral snapshots' until preferences set
-- another. Clearing an idle contact clears this with the number, so that the patient's next
-- referral event brings a number back.
--
-- Rows from before this column stay NULL: who set their number is not known, and the number
-- on file is the one the last referral event carried.
ALTER TABLE contacts ADD COLUMN mobile_set_by text;
