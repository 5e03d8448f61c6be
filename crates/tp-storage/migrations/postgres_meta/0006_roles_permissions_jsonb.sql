-- Role permissions as a JSON array, the shape SQLite stores, so one SQL store reads
-- and writes both backends the same way.
ALTER TABLE roles ALTER COLUMN permissions TYPE jsonb USING to_jsonb(permissions);
