//! The device side of OTA upgrades ([`tp_core::ota`]): a device's
//! `ota/devices/progress` reports move its task detail, and (feature `http`) the HTTP
//! device API serves the packages of its tasks.
//!
//! # Downloads
//!
//! `GET /api/v1/device/ota/packages/{package_id}` with the device's own HTTP Basic
//! credentials (as every HTTP device request, see [`crate::http`]) answers the
//! package file. A device may download exactly the packages of tasks that target it
//! (and that it was not cancelled from); any other package, of its tenant or not, is
//! `404`, so ids of other packages cannot be probed. `Range` requests are answered
//! `206 Partial Content` (tower-http's `ServeFile`), so an interrupted download
//! resumes where it stopped. The first download of a device that was pending or
//! notified moves its detail to `downloading`.

use std::path::PathBuf;

use tp_core::Device;
use tp_core::ota::{OtaState, OtaStore, OtaStoreRef, apply_progress, parse_progress};

/// OTA for the broker ([`crate::BrokerOptions::ota`]).
#[derive(Debug, Clone)]
pub struct OtaDownloads {
    /// Packages, tasks and details (the metadata database).
    pub store: OtaStoreRef,
    /// Where uploaded packages are kept, one file per package named by its id (the
    /// API's `ota` directory, `<data_dir>/ota`).
    pub dir: PathBuf,
}

/// Applies an `ota/devices/progress` report of `device` to the detail it belongs to:
/// the device's newest active detail whose package upgrades the reported `module`
/// (or its newest active detail, when the report names none or no package matches).
/// A report for a device with no active task is logged and ignored; a malformed
/// report is an error (the message is still stored as an event).
pub(crate) async fn record_progress(
    store: &dyn OtaStore,
    device: &Device,
    payload: &[u8],
    now: i64,
) -> tp_core::Result<()> {
    let report = parse_progress(payload)?;
    let active = store.active_details(device.tenant_id, device.id).await?;
    if active.is_empty() {
        tracing::debug!(device_id = %device.id, step = report.step, "OTA progress without an active task; ignored");
        return Ok(());
    }
    let mut chosen = None;
    if let Some(module) = &report.module {
        for d in &active {
            let package = store.get_package(device.tenant_id, d.package_id).await?;
            if package.is_some_and(|p| &p.module == module) {
                chosen = Some(d.clone());
                break;
            }
        }
    }
    let Some(mut detail) = chosen.or_else(|| active.into_iter().next()) else {
        return Ok(());
    };
    if apply_progress(&mut detail, &report, now) {
        store.update_detail(&detail).await?;
        metrics::counter!("tp_ota_progress_total", "state" => detail.state.as_str()).increment(1);
        tracing::info!(device_id = %device.id, task_id = %detail.task_id, step = report.step,
            state = detail.state.as_str(), "OTA progress");
    }
    Ok(())
}

/// A device fetching a package: moves a pending or notified detail to `downloading`.
#[cfg_attr(not(feature = "http"), allow(dead_code))]
pub(crate) async fn mark_downloading(
    store: &dyn OtaStore,
    mut detail: tp_core::ota::OtaTaskDetail,
) -> tp_core::Result<()> {
    if matches!(detail.state, OtaState::Pending | OtaState::Notified) {
        detail.state = OtaState::Downloading;
        detail.updated_at = tp_core::now_ms();
        store.update_detail(&detail).await?;
    }
    Ok(())
}
