-- The department's name as clinics read it (科室名称): the scheduler's reasons use it.
ALTER TABLE sessions ADD COLUMN department_name text NOT NULL DEFAULT '';
