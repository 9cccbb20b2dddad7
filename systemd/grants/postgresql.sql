-- hanjullo-node: the PostgreSQL role and database of a node, without superuser.
-- Run once, as a superuser (or a role with CREATEROLE and CREATEDB), with the three
-- values filled in (docs/least-privilege.md):
--   NODE_USER=hanjullo_node NODE_DB=hanjullo NODE_PASSWORD='…' \
--     envsubst < postgresql.sql | sudo -u postgres psql -v ON_ERROR_STOP=1
-- Afterwards `hanjulloctl db init`, the daemon and the CLI all connect as NODE_USER.

-- A login role that can do nothing outside what it owns.
CREATE ROLE "${NODE_USER}" LOGIN PASSWORD '${NODE_PASSWORD}'
  NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT;

-- The node's database, owned by the role: it creates and migrates the node's tables in
-- its public schema (PostgreSQL 15+: public belongs to the database owner), takes the
-- migration advisory lock, LISTENs and NOTIFYs; no extension is needed
-- (gen_random_uuid() is built in since PostgreSQL 13).
CREATE DATABASE "${NODE_DB}" OWNER "${NODE_USER}" ENCODING 'UTF8' TEMPLATE template0;

-- No one else may connect to it (superusers still can).
REVOKE CONNECT, TEMPORARY ON DATABASE "${NODE_DB}" FROM PUBLIC;
