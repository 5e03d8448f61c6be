-- Scene automation (tp_core::rules::RuleStore) on PostgreSQL: rules, manual scenes,
-- alarms and their history, notification channels and the notification history,
-- persisted rule state. Ids are native uuid; times are Unix milliseconds (bigint).
-- Trigger groups, actions, channel settings, alarm details and engine state are jsonb
-- (serde shapes of tp-core). Constraints are named: the store maps violations by
-- constraint name. Rows refer to devices, profiles and channels without foreign keys:
-- alarms and notifications are history and outlive what they are about. Names sort
-- bytewise (COLLATE "C"), as on SQLite.

CREATE TABLE rules (
    id             uuid             NOT NULL CONSTRAINT rules_pkey PRIMARY KEY,
    tenant_id      uuid             NOT NULL,
    name           text COLLATE "C" NOT NULL,
    description    text,
    enabled        boolean          NOT NULL,
    trigger_groups jsonb            NOT NULL,
    actions        jsonb            NOT NULL,
    created_at     bigint           NOT NULL,
    updated_at     bigint           NOT NULL,
    CONSTRAINT rules_tenant_name_key UNIQUE (tenant_id, name)
);
-- What the engine loads at start and after every change.
CREATE INDEX rules_enabled ON rules (tenant_id) WHERE enabled;

CREATE TABLE scenes (
    id          uuid             NOT NULL CONSTRAINT scenes_pkey PRIMARY KEY,
    tenant_id   uuid             NOT NULL,
    name        text COLLATE "C" NOT NULL,
    description text,
    actions     jsonb            NOT NULL,
    created_at  bigint           NOT NULL,
    updated_at  bigint           NOT NULL,
    CONSTRAINT scenes_tenant_name_key UNIQUE (tenant_id, name)
);

CREATE TABLE alarms (
    id              uuid   NOT NULL CONSTRAINT alarms_pkey PRIMARY KEY,
    tenant_id       uuid   NOT NULL,
    rule_id         uuid,
    device_id       uuid,
    severity        text   NOT NULL,
    status          text   NOT NULL,
    title           text   NOT NULL,
    description     text,
    occurrences     bigint NOT NULL,
    details         jsonb  NOT NULL,
    created_at      bigint NOT NULL,
    updated_at      bigint NOT NULL,
    acknowledged_at bigint,
    acknowledged_by uuid,
    cleared_at      bigint
);
-- At most one open (active or acknowledged) alarm per rule and device, across nodes.
-- A rule's device-less alarm is keyed by the nil uuid (NULLs would never collide).
CREATE UNIQUE INDEX alarms_one_open ON alarms
    (rule_id, coalesce(device_id, '00000000-0000-0000-0000-000000000000'::uuid))
    WHERE status <> 'cleared' AND rule_id IS NOT NULL;
CREATE INDEX alarms_by_tenant ON alarms (tenant_id, created_at, id);
CREATE INDEX alarms_by_device ON alarms (tenant_id, device_id, created_at)
    WHERE device_id IS NOT NULL;

-- seq keeps append order among events of the same millisecond.
CREATE TABLE alarm_events (
    seq       bigserial NOT NULL CONSTRAINT alarm_events_pkey PRIMARY KEY,
    alarm_id  uuid      NOT NULL CONSTRAINT alarm_events_alarm_fkey
        REFERENCES alarms (id) ON DELETE CASCADE,
    tenant_id uuid      NOT NULL,
    ts        bigint    NOT NULL,
    kind      text      NOT NULL,
    user_id   uuid,
    text      text
);
CREATE INDEX alarm_events_by_alarm ON alarm_events (alarm_id, ts, seq);

CREATE TABLE notification_channels (
    id         uuid             NOT NULL CONSTRAINT notification_channels_pkey PRIMARY KEY,
    tenant_id  uuid             NOT NULL,
    name       text COLLATE "C" NOT NULL,
    enabled    boolean          NOT NULL,
    kind       jsonb            NOT NULL, -- ChannelKind, including a webhook's secret
    created_at bigint           NOT NULL,
    CONSTRAINT notification_channels_tenant_name_key UNIQUE (tenant_id, name)
);

CREATE TABLE notifications (
    id         uuid   NOT NULL CONSTRAINT notifications_pkey PRIMARY KEY,
    tenant_id  uuid   NOT NULL,
    channel_id uuid   NOT NULL,
    alarm_id   uuid,
    rule_id    uuid,
    subject    text   NOT NULL,
    body       text   NOT NULL,
    status     text   NOT NULL,
    attempts   bigint NOT NULL,
    detail     text,
    created_at bigint NOT NULL,
    updated_at bigint NOT NULL
);
CREATE INDEX notifications_by_tenant ON notifications (tenant_id, created_at, id);

-- Deleting a rule deletes its state; state of an unknown rule is refused.
CREATE TABLE rule_states (
    rule_id    uuid   NOT NULL CONSTRAINT rule_states_rule_fkey
        REFERENCES rules (id) ON DELETE CASCADE,
    scope      text COLLATE "C" NOT NULL,
    state      jsonb  NOT NULL,
    updated_at bigint NOT NULL,
    CONSTRAINT rule_states_pkey PRIMARY KEY (rule_id, scope)
);
