-- SPDX-License-Identifier: Apache-2.0
-- Generates the database the sqlite3 workload queries (perf/malloc/run.py; not timed).
-- The row count comes from a parameter table the runner fills: rows(n).
CREATE TABLE item(id INTEGER PRIMARY KEY, name TEXT, grp INTEGER, price REAL, note TEXT);
WITH RECURSIVE seq(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM seq WHERE i < (SELECT n FROM rows))
INSERT INTO item SELECT i, 'item-' || hex(randomblob(4)) || '-' || (i % 1000), i % 977,
  (i * 7919 % 10007) / 100.0, substr(hex(randomblob(32)), 1, 8 + i % 56) FROM seq;
CREATE TABLE tag(item INTEGER, tag TEXT);
INSERT INTO tag SELECT id, 't' || (id * 31 % 211) FROM item;
INSERT INTO tag SELECT id, 't' || (id * 17 % 113) FROM item WHERE id % 3 = 0;
DROP TABLE rows;
