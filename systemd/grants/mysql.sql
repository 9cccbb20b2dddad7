-- hanjullo-node: the MySQL/MariaDB account and database of a node, without root.
-- Run once, as root, with the three values filled in (docs/least-privilege.md):
--   NODE_USER=hanjullo_node NODE_DB=hanjullo NODE_PASSWORD='…' \
--     envsubst < mysql.sql | sudo mysql
-- Afterwards `hanjulloctl db init` and the daemon connect as NODE_USER.

CREATE DATABASE `${NODE_DB}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;

-- The daemon connects over TCP to [mysql] host (127.0.0.1 by default). The server sees
-- it as '127.0.0.1' when it runs with skip-name-resolve (as Debian's MariaDB does), else
-- as 'localhost': one account for each, the same grants.
CREATE USER '${NODE_USER}'@'127.0.0.1' IDENTIFIED BY '${NODE_PASSWORD}';
CREATE USER '${NODE_USER}'@'localhost' IDENTIFIED BY '${NODE_PASSWORD}';

-- Exactly what the daemon does to the agent tables, on its own database only:
--   SELECT  backlogs, lookups after a crash, results from the live and log tables, and
--           the locking reads (SELECT … FOR UPDATE) of pull-back and failover;
--   INSERT  batches (multi-row INSERT and LOAD DATA LOCAL INFILE), failover moves;
--   DELETE  pulling back waiting rows (pause, cancel), failover moves;
--   CREATE  `db init` and the monthly log tables created ahead (SMSQ_SEND_<n>_<YYYYMM>).
-- Not UPDATE: the daemon never changes an agent's row (the QTmsg agents do, with
-- accounts of their own). Not FILE: LOAD DATA *LOCAL* reads nothing on the server's
-- side, the client sends the rows itself (dispatch/infile.py); FILE would let the
-- account read and write the server's files.
GRANT SELECT, INSERT, DELETE, CREATE ON `${NODE_DB}`.* TO '${NODE_USER}'@'127.0.0.1';
GRANT SELECT, INSERT, DELETE, CREATE ON `${NODE_DB}`.* TO '${NODE_USER}'@'localhost';
