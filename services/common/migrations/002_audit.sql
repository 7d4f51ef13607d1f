-- Who read or changed which patient's data: append-only, in every service's schema.
CREATE TABLE audit_log (
    id             bigserial PRIMARY KEY,
    occurred_at    timestamptz NOT NULL DEFAULT now(),
    subject        text        NOT NULL,
    institution_id text        NOT NULL,
    role           text        NOT NULL,
    action         text        NOT NULL,
    resource       text        NOT NULL,
    patient_id     text,
    request_id     text        NOT NULL
);
CREATE INDEX audit_log_patient ON audit_log (patient_id, occurred_at);

-- Append-only even for the table's owner: the service's own database user cannot
-- rewrite history (a cluster also revokes UPDATE/DELETE/TRUNCATE from that user).
CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only' USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER audit_log_no_update BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
