-- Dashboards (tp_core::dashboard::DashboardStore) and the indexes of the home
-- page's trends (tp_core::trends::TrendStore).
--
-- Dashboards: a tenant's grids of widgets. The
-- widgets are one JSON document per dashboard, always read and written together.

CREATE TABLE dashboards (
    id          uuid    NOT NULL CONSTRAINT dashboards_pkey PRIMARY KEY,
    tenant_id   uuid    NOT NULL,
    name        text    NOT NULL,
    description text,
    home        boolean NOT NULL,
    widgets     jsonb   NOT NULL,
    created_at  bigint  NOT NULL,
    updated_at  bigint  NOT NULL
);
CREATE INDEX dashboards_by_tenant ON dashboards (tenant_id, name, id);
-- At most one home dashboard per tenant, for every writer and node.
CREATE UNIQUE INDEX dashboards_one_home ON dashboards (tenant_id) WHERE home;

-- Trends: a tenant's status transitions (covering: the per-hour aggregate reads no
-- row) and cleared alarms since a time.
CREATE INDEX device_status_history_by_tenant ON device_status_history (tenant_id, at, online);
CREATE INDEX alarms_cleared_by_tenant ON alarms (tenant_id, cleared_at)
    WHERE cleared_at IS NOT NULL;
