//! Downlink as every path issues it: the command log is the source of truth, a row
//! is logged before anything is published, and where it goes is computed from the
//! device and its gateways ([`route`]).
//!
//! # The log protocol
//! A downlink is a [`CommandLog`] row with status `pending`. Whoever publishes it
//! (the REST API or a rule for a reachable device through [`issue_downlink`], the
//! broker's delivery pass when the device subscribes) first marks the row `sent`
//! and then publishes; a failed publish puts it back to `pending`. Marking before
//! publishing means a fast device response (which marks the row `replied`/`failed`
//! on ingest) is never overwritten by a late `sent`. Rows past their `expires_at`
//! are marked `expired` instead of delivered ([`expire_if_stale`]).
//!
//! # Routing
//! A direct device gets its downlink on its own `devices/…` topic; a gateway (its
//! profile's device type) on its `gateway/…` topic inside `{"gateway_data":…}`; a
//! sub-device through its top-level gateway, wrapped in `sub_device_data` /
//! `sub_gateway_data` for each gateway in between ([`route`]).
//!
//! ```
//! use tp_core::CommandKind;
//! use tp_core::downlink::downlink_topic;
//!
//! assert_eq!(downlink_topic(CommandKind::Command, "boiler-1", "ab12cd34"),
//!            "devices/command/boiler-1/ab12cd34");
//! assert_eq!(downlink_topic(CommandKind::TelemetryControl, "boiler-1", "ignored"),
//!            "devices/telemetry/control/boiler-1");
//! ```

use std::collections::HashSet;

use crate::protocol::{DownlinkKind, DownlinkTopic, GatewayEnvelope, MAX_GATEWAY_DEPTH};
use crate::{
    AccessStore, CommandId, CommandKind, CommandLog, CommandStatus, Device, DeviceId, DeviceType,
    Downlink, Error, MetadataStore, Page, PublishedDownlink, Result, TenantId, Timestamp, now_ms,
    random_token,
};

/// Default lifetime of a queued downlink: one day.
pub const DEFAULT_EXPIRY_SECS: u32 = 86_400;

/// Rows read per page while scanning a device's log for pending rows.
const SCAN_PAGE: u64 = 500;

/// The downlink topic a log row of `kind` is published on (ThingsPanel's topics; the
/// kinds without a `{message_id}` level ignore `message_id`).
pub fn downlink_topic(kind: CommandKind, device_number: &str, message_id: &str) -> String {
    let kind = downlink_kind(kind);
    DownlinkTopic {
        gateway: false,
        kind,
        device_number: device_number.to_owned(),
        message_id: kind.has_message_id().then(|| message_id.to_owned()),
    }
    .to_topic()
}

/// Where a downlink for a device goes, as ThingsPanel sends it: a direct device gets
/// it on its own `devices/…` topic as it is; a gateway (its profile's device type)
/// on its own `gateway/…` topic as `{"gateway_data":…}`; a device behind gateways
/// through its top-level gateway, on that gateway's topic, as
/// `{"sub_device_data":{addr:…}}` (a sub-device) or
/// `{"sub_gateway_data":{addr:{"gateway_data":…}}}` (a sub-gateway), nested in
/// `sub_gateway_data` for each gateway in between.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// The device whose connection receives the message (the top-level gateway).
    pub device_id: DeviceId,
    /// Full topic.
    pub topic: String,
    /// Payload as published.
    pub payload: serde_json::Value,
}

impl Route {
    /// What the log records as published.
    pub fn published(&self) -> PublishedDownlink {
        PublishedDownlink {
            topic: self.topic.clone(),
            payload: self.payload.clone(),
        }
    }
}

/// Whether `device`'s profile makes it a gateway (without a profile store, or a
/// profile, it is not).
pub async fn is_gateway(profiles: Option<&dyn AccessStore>, device: &Device) -> Result<bool> {
    let (Some(profiles), Some(profile_id)) = (profiles, device.profile_id) else {
        return Ok(false);
    };
    Ok(profiles
        .get_profile(device.tenant_id, profile_id)
        .await?
        .is_some_and(|p| p.device_type == DeviceType::Gateway))
}

/// Computes the [`Route`] of a downlink of `kind` with `message_id` and `payload` for
/// `device`; `profiles` tells which devices are gateways.
pub async fn route(
    metadata: &dyn MetadataStore,
    profiles: Option<&dyn AccessStore>,
    device: &Device,
    kind: CommandKind,
    message_id: &str,
    payload: &serde_json::Value,
) -> Result<Route> {
    // ThingsPanel has no gateway form of the OTA inform: it goes to the device's own
    // `ota/devices/inform/{device_number}` (a sub-device without a connection of its
    // own gets it when it connects directly).
    if kind == CommandKind::OtaInform {
        return Ok(Route {
            device_id: device.id,
            topic: downlink_topic(kind, &device.device_number, message_id),
            payload: payload.clone(),
        });
    }
    let mut addrs = Vec::new();
    let mut top = device.clone();
    while let Some(parent_id) = top.parent_id {
        if addrs.len() >= MAX_GATEWAY_DEPTH {
            return Err(Error::invalid(
                "parent_id",
                format!("gateway chain deeper than {MAX_GATEWAY_DEPTH}"),
            ));
        }
        let Some(addr) = top.sub_device_addr.clone() else {
            return Err(Error::invalid(
                "sub_device_addr",
                format!("device {} has a gateway but no sub-device address", top.id),
            ));
        };
        let Some(parent) = metadata.get_device_by_id(parent_id).await? else {
            return Err(Error::not_found("gateway", parent_id));
        };
        addrs.push(addr);
        top = parent;
    }
    let gateway = is_gateway(profiles, device).await?;
    if addrs.is_empty() && !gateway {
        return Ok(Route {
            device_id: device.id,
            topic: downlink_topic(kind, &device.device_number, message_id),
            payload: payload.clone(),
        });
    }
    let dkind = downlink_kind(kind);
    let message_id = dkind.has_message_id().then(|| message_id.to_owned());
    // Inside the envelope an attribute get is the bare key array.
    let own = match kind {
        CommandKind::AttributeGet => payload
            .get("keys")
            .cloned()
            .unwrap_or_else(|| serde_json::json!([])),
        _ => payload.clone(),
    };
    let mut envelope = GatewayEnvelope::default();
    match addrs.first() {
        None => envelope.gateway_data = Some(own),
        Some(addr) if gateway => {
            let inner = GatewayEnvelope {
                gateway_data: Some(own),
                ..GatewayEnvelope::default()
            };
            envelope.sub_gateway_data.insert(addr.clone(), inner);
        }
        Some(addr) => {
            envelope.sub_device_data.insert(addr.clone(), own);
        }
    }
    for addr in addrs.iter().skip(1) {
        let mut outer = GatewayEnvelope::default();
        outer.sub_gateway_data.insert(addr.clone(), envelope);
        envelope = outer;
    }
    let topic = DownlinkTopic {
        gateway: true,
        kind: dkind,
        device_number: top.device_number.clone(),
        message_id,
    }
    .to_topic();
    Ok(Route {
        device_id: top.id,
        topic,
        payload: serde_json::to_value(&envelope).unwrap_or_default(),
    })
}

fn downlink_kind(kind: CommandKind) -> DownlinkKind {
    match kind {
        CommandKind::Command => DownlinkKind::Command,
        CommandKind::AttributeSet => DownlinkKind::AttributeSet,
        CommandKind::AttributeGet => DownlinkKind::AttributeGet,
        CommandKind::TelemetryControl => DownlinkKind::TelemetryControl,
        CommandKind::OtaInform => DownlinkKind::OtaInform,
    }
}

/// A fresh message id: 8 lower-case hex characters from a random source, like
/// ThingsPanel's (the first 8 characters of a UUID).
pub fn new_message_id() -> String {
    random_token(4)
}

/// Whether a pending row is past its expiry at `now`.
pub fn is_expired(row: &CommandLog, now: Timestamp) -> bool {
    row.status == CommandStatus::Pending && row.expires_at.is_some_and(|at| at < now)
}

/// Marks `row` expired in the store if it is pending and past its expiry; returns
/// whether it did.
pub async fn expire_if_stale(
    metadata: &dyn MetadataStore,
    row: &mut CommandLog,
    now: Timestamp,
) -> Result<bool> {
    if !is_expired(row, now) {
        return Ok(false);
    }
    row.status = CommandStatus::Expired;
    row.updated_at = now;
    metadata.update_command(row).await?;
    Ok(true)
}

/// A device's pending log rows, oldest first.
pub async fn pending_commands(
    metadata: &dyn MetadataStore,
    tenant: TenantId,
    device: DeviceId,
) -> Result<Vec<CommandLog>> {
    let mut seen = HashSet::new();
    let mut pending = Vec::new();
    let mut offset = 0;
    loop {
        let page = metadata
            .list_commands(
                tenant,
                device,
                Page {
                    offset,
                    limit: SCAN_PAGE,
                },
            )
            .await?;
        let n = page.items.len() as u64;
        for row in page.items {
            // Rows inserted meanwhile shift later pages by one: skip repeats.
            if row.status == CommandStatus::Pending && seen.insert(row.id) {
                pending.push(row);
            }
        }
        offset += n;
        if n == 0 || offset >= page.total {
            break;
        }
    }
    pending.sort_by_key(|r| (r.created_at, r.id));
    Ok(pending)
}

/// Publish attempts of one request: a second attempt closes the window in which the
/// device's SUBACK was processed between our failed attempt and putting the row back
/// to `pending` (that delivery pass did not see the row as pending).
const SEND_ATTEMPTS: usize = 2;

/// Issues a downlink the way every path does (the REST API's endpoints and the rule
/// engine's device actions), so all log and deliver identically: logs the row as pending and
/// publishes it if the device can receive it now (else the broker delivers it when
/// the device subscribes).
pub async fn issue_downlink(
    metadata: &crate::MetadataStoreRef,
    profiles: Option<&crate::AccessStoreRef>,
    transport: Option<&crate::DeviceTransportRef>,
    device: &Device,
    kind: CommandKind,
    payload: serde_json::Value,
    lifetime_ms: i64,
) -> crate::Result<CommandLog> {
    // 8 hex characters collide eventually; responses are matched by (device, message_id).
    let mut message_id = new_message_id();
    for _ in 0..8 {
        if metadata
            .get_command_by_message_id(device.id, &message_id)
            .await?
            .is_none()
        {
            break;
        }
        message_id = new_message_id();
    }
    let now = now_ms();
    let mut row = CommandLog {
        id: CommandId::new(),
        tenant_id: device.tenant_id,
        device_id: device.id,
        message_id,
        kind,
        payload,
        status: CommandStatus::Pending,
        response: None,
        created_at: now,
        updated_at: now,
        expires_at: Some(now + lifetime_ms),
        published: None,
    };
    let Some(transport) = transport else {
        metadata.create_command(&row).await?;
        return Ok(row);
    };
    // A sub-device is reached through its top-level gateway, in the gateway envelope.
    let route = match route(
        metadata.as_ref(),
        profiles.map(|p| p.as_ref() as &dyn AccessStore),
        device,
        kind,
        &row.message_id,
        &row.payload,
    )
    .await
    {
        Ok(route) => route,
        Err(e) => {
            metadata.create_command(&row).await?;
            return Err(e);
        }
    };
    let published = route.published();
    let message = Downlink {
        device_id: route.device_id,
        topic: route.topic,
        payload: serde_json::to_vec(&route.payload)
            .unwrap_or_default()
            .into(),
    };
    // The row is first stored as "sent" when the device is connected: a row stored as
    // pending could be picked up by the broker's queued-delivery pass (which runs when
    // the device subscribes) at the same time as this send, and the device would get
    // the command twice.
    let mut stored = false;
    for _ in 0..SEND_ATTEMPTS {
        if !transport.is_connected(route.device_id).await {
            break;
        }
        // Sent before publishing, so a fast response is never overwritten by "sent".
        row.status = CommandStatus::Sent;
        row.published = Some(published.clone());
        row.updated_at = now_ms();
        if stored {
            metadata.update_command(&row).await?;
        } else {
            metadata.create_command(&row).await?;
            stored = true;
        }
        let sent = transport.send(message.clone()).await;
        let Err(e) = sent else {
            return Ok(row);
        };
        row.status = CommandStatus::Pending;
        row.published = None;
        row.updated_at = now_ms();
        metadata.update_command(&row).await?;
        if matches!(e, crate::Error::NotFound { .. }) {
            tracing::debug!(device_id = %device.id, message_id = %row.message_id, reason = %e,
                "device cannot receive the downlink yet; queued");
        } else {
            tracing::warn!(device_id = %device.id, message_id = %row.message_id, error = %e,
                "cannot publish downlink; queued");
            break;
        }
    }
    if !stored {
        row.status = CommandStatus::Pending;
        metadata.create_command(&row).await?;
    }
    // In a cluster the device may be connected to another node.
    transport.queued(route.device_id, &row.message_id).await;
    Ok(row)
}
