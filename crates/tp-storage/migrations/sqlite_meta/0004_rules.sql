-- Scene automation (tp_core::rules::RuleStore): rules, manual scenes, alarms and their
-- history, notification channels and the notification history, persisted rule state.
-- Ids are hyphenated UUID text; times are Unix milliseconds. Trigger groups, actions,
-- channel settings and engine state are JSON text (serde shapes of tp-core). Rows
-- refer to devices, profiles and channels without foreign keys: alarms and
-- notifications are history and outlive what they are about.

CREATE TABLE rules (
    id             TEXT    NOT NULL PRIMARY KEY,
    tenant_id      TEXT    NOT NULL,
    name           TEXT    NOT NULL,
    description    TEXT,
    enabled        INTEGER NOT NULL,
    trigger_groups TEXT    NOT NULL, -- JSON array of TriggerGroup
    actions        TEXT    NOT NULL, -- JSON array of Action
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL,
    UNIQUE (tenant_id, name)
);
-- What the engine loads at start and after every change.
CREATE INDEX rules_enabled ON rules (tenant_id) WHERE enabled <> 0;

CREATE TABLE scenes (
    id          TEXT    NOT NULL PRIMARY KEY,
    tenant_id   TEXT    NOT NULL,
    name        TEXT    NOT NULL,
    description TEXT,
    actions     TEXT    NOT NULL, -- JSON array of Action
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    UNIQUE (tenant_id, name)
);

CREATE TABLE alarms (
    id              TEXT    NOT NULL PRIMARY KEY,
    tenant_id       TEXT    NOT NULL,
    rule_id         TEXT,
    device_id       TEXT,
    severity        TEXT    NOT NULL,
    status          TEXT    NOT NULL,
    title           TEXT    NOT NULL,
    description     TEXT,
    occurrences     INTEGER NOT NULL,
    details         TEXT    NOT NULL, -- JSON
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    acknowledged_at INTEGER,
    acknowledged_by TEXT,
    cleared_at      INTEGER
);
-- At most one open (active or acknowledged) alarm per rule and device, across nodes.
-- A rule's device-less alarm is keyed by '' (NULLs would never collide).
CREATE UNIQUE INDEX alarms_one_open ON alarms (rule_id, coalesce(device_id, ''))
    WHERE status <> 'cleared' AND rule_id IS NOT NULL;
CREATE INDEX alarms_by_tenant ON alarms (tenant_id, created_at, id);
CREATE INDEX alarms_by_device ON alarms (tenant_id, device_id, created_at)
    WHERE device_id IS NOT NULL;

-- seq keeps append order among events of the same millisecond.
CREATE TABLE alarm_events (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,
    alarm_id  TEXT    NOT NULL REFERENCES alarms (id) ON DELETE CASCADE,
    tenant_id TEXT    NOT NULL,
    ts        INTEGER NOT NULL,
    kind      TEXT    NOT NULL,
    user_id   TEXT,
    text      TEXT
);
CREATE INDEX alarm_events_by_alarm ON alarm_events (alarm_id, ts, seq);

CREATE TABLE notification_channels (
    id         TEXT    NOT NULL PRIMARY KEY,
    tenant_id  TEXT    NOT NULL,
    name       TEXT    NOT NULL,
    enabled    INTEGER NOT NULL,
    kind       TEXT    NOT NULL, -- JSON ChannelKind, including a webhook's secret
    created_at INTEGER NOT NULL,
    UNIQUE (tenant_id, name)
);

CREATE TABLE notifications (
    id         TEXT    NOT NULL PRIMARY KEY,
    tenant_id  TEXT    NOT NULL,
    channel_id TEXT    NOT NULL,
    alarm_id   TEXT,
    rule_id    TEXT,
    subject    TEXT    NOT NULL,
    body       TEXT    NOT NULL,
    status     TEXT    NOT NULL,
    attempts   INTEGER NOT NULL,
    detail     TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX notifications_by_tenant ON notifications (tenant_id, created_at, id);

-- Deleting a rule deletes its state; state of an unknown rule is refused.
CREATE TABLE rule_states (
    rule_id    TEXT    NOT NULL REFERENCES rules (id) ON DELETE CASCADE,
    scope      TEXT    NOT NULL,
    state      TEXT    NOT NULL, -- JSON, engine-defined
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (rule_id, scope)
) WITHOUT ROWID;
