-- A create writes everything (referral, transitions, outbox event, audit row, change-log row,
-- episode total) in one statement. When the episode's total moved since the create read it,
-- the statement must undo itself and be retried: raised as serialization_failure (40001),
-- the code a client retries on.
CREATE FUNCTION referral_retry(reason text) RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RAISE EXCEPTION '%', reason USING ERRCODE = 'serialization_failure';
END $$;
