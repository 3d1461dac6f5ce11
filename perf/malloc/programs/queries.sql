-- SPDX-License-Identifier: Apache-2.0
-- The timed sqlite3 workload: grouping, sorting, joins, string functions, an index built in a
-- transaction that is rolled back (the database file is left as generated).
SELECT grp, count(*), round(sum(price), 2), max(length(note)) FROM item GROUP BY grp
  ORDER BY 3 DESC LIMIT 5;
SELECT name, price FROM item ORDER BY note, price DESC LIMIT 5;
SELECT t.tag, count(DISTINCT i.grp), group_concat(DISTINCT i.id % 7)
  FROM tag t JOIN item i ON i.id = t.item GROUP BY t.tag ORDER BY 2 DESC, 1 LIMIT 5;
SELECT count(*) FROM item WHERE name LIKE '%-12%' OR note GLOB '*AB*';
SELECT length(group_concat(upper(note), '|')) FROM (SELECT note FROM item ORDER BY id DESC);
BEGIN;
CREATE INDEX item_note ON item(note, grp);
CREATE TEMP TABLE big AS SELECT i.id, i.note || t.tag AS s FROM item i JOIN tag t ON t.item = i.id;
SELECT count(*), max(s) FROM big;
ROLLBACK;
