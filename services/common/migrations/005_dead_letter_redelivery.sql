-- When an operator handed a dead-lettered event back to its stream (services.common.dead_letters).
ALTER TABLE dead_letters ADD COLUMN redelivered_at timestamptz;
