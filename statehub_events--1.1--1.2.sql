/* statehub_events--1.1--1.2.sql */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION statehub_events UPDATE TO '1.2'" to load this file. \quit

/*
 * Brings an installed 1.1 to exactly what statehub_events--1.2.sql creates:
 * test/t/010_upgrade.pl compares the two (objects, privileges, pg_dump)
 * after every change.  Each section names the change it makes.
 */
