-- At most one open episode per patient and ICD-10 category: two first referrals of one
-- patient written at the same time could each open one and split the deductible paid
-- between them (累计计算住院起付线), so that the patient paid it again on the next referral.
-- An episode is closed by the referral that opens the next one once it has lapsed
-- (180 days without a referral of it, rules.episode_continues).
ALTER TABLE episodes ADD COLUMN closed_at timestamptz;

-- Earlier data may hold several per patient and category: all but the latest are closed.
UPDATE episodes e SET closed_at = now()
WHERE EXISTS (SELECT 1 FROM episodes n
              WHERE n.consortium_id = e.consortium_id AND n.patient_id = e.patient_id
                AND n.icd_category = e.icd_category
                AND (n.last_activity_at, n.episode_id) > (e.last_activity_at, e.episode_id));

CREATE UNIQUE INDEX episodes_open ON episodes (consortium_id, patient_id, icd_category) WHERE closed_at IS NULL;
-- Every lookup by patient now reads the open episode (episodes_open).
DROP INDEX episodes_patient;
