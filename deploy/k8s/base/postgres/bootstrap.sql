-- One login role per service, each owning only its own schema (ARCHITECTURE.md: a service
-- never reads another's tables). Idempotent: CloudNativePG runs it once at bootstrap as
-- superuser in the application database; a DBA can rerun it with psql against any
-- PostgreSQL (e.g. a hospital's existing server) after creating the same roles.
--
-- The roles are created NOLOGIN here because managed roles are reconciled only after
-- bootstrap; the operator then adopts them and sets LOGIN and the password from the
-- <service>-db Secrets.
DO $$
DECLARE
  svc text;
BEGIN
  FOREACH svc IN ARRAY ARRAY['referral', 'scheduling', 'notify'] LOOP
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = svc) THEN
      EXECUTE format('CREATE ROLE %I NOLOGIN', svc);
    END IF;
    EXECUTE format('CREATE SCHEMA IF NOT EXISTS %I AUTHORIZATION %I', svc, svc);
    EXECUTE format('ALTER SCHEMA %I OWNER TO %I', svc, svc);
    EXECUTE format('REVOKE ALL ON SCHEMA %I FROM PUBLIC', svc);
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), svc);
    EXECUTE format('ALTER ROLE %I IN DATABASE %I SET search_path = %I', svc, current_database(), svc);
  END LOOP;
  -- Nobody else may connect, and nobody may create objects outside their own schema.
  EXECUTE format('REVOKE ALL ON DATABASE %I FROM PUBLIC', current_database());
END
$$;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
REVOKE ALL ON SCHEMA public FROM PUBLIC;
