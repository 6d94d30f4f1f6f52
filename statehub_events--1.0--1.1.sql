/* statehub_events--1.0--1.1.sql */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION statehub_events UPDATE TO '1.1'" to load this file. \quit

/*
 * Brings an installed 1.0 to exactly what statehub_events--1.1.sql creates:
 * a test compares the two (objects and privileges) after every change.
 */
