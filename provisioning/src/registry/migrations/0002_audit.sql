-- Migration 2: every station's audit log, copied into the shared registry, and its anchor.
--
-- audit_records: one row per record of a station's DIR/audit.log: its exact line, the hash
-- of the line before (`prev`, also inside the line) and the SHA-256 of the line (`hash`).
-- audit_heads: the station's newest record, moved in the same statement that inserts the
-- records it anchors; a station whose file ends elsewhere was cut off or replaced.
CREATE TABLE audit_records (
    station TEXT NOT NULL,
    seq BIGINT NOT NULL CHECK (seq >= 1),
    prev TEXT NOT NULL,
    line TEXT NOT NULL,
    hash TEXT NOT NULL,
    PRIMARY KEY (station, seq)
);

CREATE TABLE audit_heads (
    station TEXT PRIMARY KEY,
    seq BIGINT NOT NULL,
    hash TEXT NOT NULL
);
