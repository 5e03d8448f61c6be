//! OTA upgrades as ThingsPanel devices know them: packages, tasks that send a
//! package to devices, and each device's progress.
//!
//! - A [`OtaPackage`] is a firmware or software image of a tenant: either a file the
//!   platform stores (its size, SHA-256 and MD5 computed while it was uploaded) or an
//!   external URL.
//! - A [`OtaTask`] sends one package to a set of devices (listed, or every device of a
//!   profile when the task was created); each device has an [`OtaTaskDetail`] whose
//!   [`OtaState`] follows what the device reports.
//! - The device is told on `ota/devices/inform/{device_number}` with ThingsPanel's
//!   payload ([`inform_payload`]), logged and queued like every other downlink, and
//!   reports on `ota/devices/progress` (`{"step":"50","desc":"..","module":"MCU"}`),
//!   which [`apply_progress`] maps onto its detail.
//!
//! ```
//! use tp_core::ota::{OtaState, OtaTaskDetail, apply_progress, parse_progress};
//! use tp_core::{DeviceId, OtaPackageId, OtaTaskId, TenantId};
//!
//! let mut detail = OtaTaskDetail::new(TenantId::new(), OtaTaskId::new(),
//!     OtaPackageId::new(), DeviceId::new(), 0);
//! apply_progress(&mut detail, &parse_progress(br#"{"step":"50","module":"MCU"}"#)?, 1);
//! assert_eq!((detail.state, detail.progress), (OtaState::Upgrading, Some(50)));
//! apply_progress(&mut detail, &parse_progress(br#"{"step":-2,"desc":"timeout"}"#)?, 2);
//! assert_eq!((detail.state, detail.code), (OtaState::Failed, Some(-2)));
//! # Ok::<(), tp_core::Error>(())
//! ```

use std::str::FromStr;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::model::{
    DeviceId, OtaPackageId, OtaTaskId, Page, Paged, ProfileId, TenantId, Timestamp,
};
use crate::{Error, Result};

/// The module a package upgrades when none is named (ThingsPanel's default).
pub const DEFAULT_MODULE: &str = "default";

/// A firmware or software image of a tenant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OtaPackage {
    /// Identifier.
    pub id: OtaPackageId,
    /// Owning tenant.
    pub tenant_id: TenantId,
    /// Display name; `(name, version)` is unique per tenant.
    pub name: String,
    /// The version the device reaches by installing it.
    pub version: String,
    /// The module it upgrades (ThingsPanel's `module`, e.g. `MCU`).
    pub module: String,
    /// The profile whose devices it is meant for, if any (informational).
    pub profile_id: Option<ProfileId>,
    /// Free text.
    pub description: Option<String>,
    /// Passed to the device as `extData`.
    pub ext_data: Option<serde_json::Value>,
    /// A signature method of the uploader's own (`MD5`, `SHA256`, ...); without it
    /// the device gets `SHA256` and the computed digest.
    pub sign_method: Option<String>,
    /// The signature that goes with `sign_method`.
    pub sign: Option<String>,
    /// An external download URL; `None` when the platform stores the file.
    pub url: Option<String>,
    /// Whether the platform holds the uploaded file.
    pub stored: bool,
    /// Size in bytes, once known.
    pub size: Option<u64>,
    /// Lower-case hex SHA-256 of the content, once known.
    pub sha256: Option<String>,
    /// Lower-case hex MD5 of the content, once known.
    pub md5: Option<String>,
    /// The name the file was uploaded under, if given.
    pub file_name: Option<String>,
    /// Creation time.
    pub created_at: Timestamp,
    /// Last change.
    pub updated_at: Timestamp,
}

impl OtaPackage {
    /// Whether a device can be sent to download it (a stored file or a URL).
    pub fn is_ready(&self) -> bool {
        self.stored || self.url.is_some()
    }

    /// `(signMethod, sign)` as the device gets them: the uploader's own, else the
    /// computed SHA-256, else MD5, else empty.
    pub fn signature(&self) -> (String, String) {
        match (&self.sign_method, &self.sign, &self.sha256, &self.md5) {
            (Some(m), Some(s), _, _) => (m.clone(), s.clone()),
            (_, _, Some(sha), _) => ("SHA256".into(), sha.clone()),
            (_, _, None, Some(md5)) => ("MD5".into(), md5.clone()),
            _ => (String::new(), String::new()),
        }
    }
}

/// ThingsPanel's inform payload for `ota/devices/inform/{device_number}`:
/// `{"id","code":200,"params":{"version","size","url","signMethod","sign","module","extData"}}`.
pub fn inform_payload(id: &str, package: &OtaPackage, url: &str) -> serde_json::Value {
    let (sign_method, sign) = package.signature();
    serde_json::json!({
        "id": id,
        "code": 200,
        "params": {
            "version": package.version,
            // ThingsPanel sends the size as a string.
            "size": package.size.map(|s| s.to_string()).unwrap_or_default(),
            "url": url,
            "signMethod": sign_method,
            "sign": sign,
            "module": package.module,
            "extData": package.ext_data.clone().unwrap_or_else(|| serde_json::json!({})),
        }
    })
}

/// Where one device stands in a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OtaState {
    /// The inform is logged and queued (the device is offline or not subscribed).
    Pending,
    /// The inform was published to the device.
    Notified,
    /// The device fetched the package from the platform.
    Downloading,
    /// The device reports progress (steps 1..99).
    Upgrading,
    /// The device reported step 100.
    Succeeded,
    /// The device reported a negative step (-1 upgrade, -2 download, -3 verify,
    /// -4 flash failed).
    Failed,
    /// Cancelled by a user; later reports of the device are ignored.
    Cancelled,
}

impl OtaState {
    /// Every state, in lifecycle order.
    pub const ALL: [OtaState; 7] = [
        OtaState::Pending,
        OtaState::Notified,
        OtaState::Downloading,
        OtaState::Upgrading,
        OtaState::Succeeded,
        OtaState::Failed,
        OtaState::Cancelled,
    ];

    /// Wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            OtaState::Pending => "pending",
            OtaState::Notified => "notified",
            OtaState::Downloading => "downloading",
            OtaState::Upgrading => "upgrading",
            OtaState::Succeeded => "succeeded",
            OtaState::Failed => "failed",
            OtaState::Cancelled => "cancelled",
        }
    }

    /// Whether the device may still report on it (not finished, failed or cancelled).
    pub fn is_active(self) -> bool {
        matches!(
            self,
            OtaState::Pending | OtaState::Notified | OtaState::Downloading | OtaState::Upgrading
        )
    }
}

impl FromStr for OtaState {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        OtaState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| Error::invalid("state", format!("unknown {s:?}")))
    }
}

/// The devices of one task, by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OtaCounts {
    /// [`OtaState::Pending`].
    pub pending: u64,
    /// [`OtaState::Notified`].
    pub notified: u64,
    /// [`OtaState::Downloading`].
    pub downloading: u64,
    /// [`OtaState::Upgrading`].
    pub upgrading: u64,
    /// [`OtaState::Succeeded`].
    pub succeeded: u64,
    /// [`OtaState::Failed`].
    pub failed: u64,
    /// [`OtaState::Cancelled`].
    pub cancelled: u64,
}

impl OtaCounts {
    /// Adds `n` devices in `state`.
    pub fn add(&mut self, state: OtaState, n: u64) {
        let slot = match state {
            OtaState::Pending => &mut self.pending,
            OtaState::Notified => &mut self.notified,
            OtaState::Downloading => &mut self.downloading,
            OtaState::Upgrading => &mut self.upgrading,
            OtaState::Succeeded => &mut self.succeeded,
            OtaState::Failed => &mut self.failed,
            OtaState::Cancelled => &mut self.cancelled,
        };
        *slot += n;
    }

    /// Every device of the task.
    pub fn total(&self) -> u64 {
        self.active() + self.succeeded + self.failed + self.cancelled
    }

    /// Devices still under way.
    pub fn active(&self) -> u64 {
        self.pending + self.notified + self.downloading + self.upgrading
    }

    /// The task's status from its devices: `in_progress` while any device is under
    /// way; then `failed` if any failed, `succeeded` if all succeeded, `cancelled`
    /// if none succeeded, else `completed` (some succeeded, the rest cancelled).
    pub fn status(&self) -> OtaTaskStatus {
        if self.active() > 0 {
            OtaTaskStatus::InProgress
        } else if self.failed > 0 {
            OtaTaskStatus::Failed
        } else if self.succeeded == self.total() && self.total() > 0 {
            OtaTaskStatus::Succeeded
        } else if self.succeeded == 0 {
            OtaTaskStatus::Cancelled
        } else {
            OtaTaskStatus::Completed
        }
    }
}

/// A task's aggregate status ([`OtaCounts::status`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OtaTaskStatus {
    /// Some device is pending, notified, downloading or upgrading.
    InProgress,
    /// Every device succeeded.
    Succeeded,
    /// No device is under way and at least one failed.
    Failed,
    /// No device is under way, none succeeded or failed.
    Cancelled,
    /// No device is under way; some succeeded, the rest were cancelled.
    Completed,
}

impl OtaTaskStatus {
    /// Wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            OtaTaskStatus::InProgress => "in_progress",
            OtaTaskStatus::Succeeded => "succeeded",
            OtaTaskStatus::Failed => "failed",
            OtaTaskStatus::Cancelled => "cancelled",
            OtaTaskStatus::Completed => "completed",
        }
    }
}

/// Sends one package to a set of devices.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OtaTask {
    /// Identifier.
    pub id: OtaTaskId,
    /// Owning tenant.
    pub tenant_id: TenantId,
    /// The package.
    pub package_id: OtaPackageId,
    /// Display name.
    pub name: String,
    /// Free text.
    pub description: Option<String>,
    /// The profile whose devices were targeted, when the task was created for one.
    pub profile_id: Option<ProfileId>,
    /// Creation time.
    pub created_at: Timestamp,
    /// The task's devices by state (computed by the store on every read; ignored on
    /// create).
    pub counts: OtaCounts,
}

/// One device of a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OtaTaskDetail {
    /// Owning tenant.
    pub tenant_id: TenantId,
    /// The task.
    pub task_id: OtaTaskId,
    /// The task's package.
    pub package_id: OtaPackageId,
    /// The device.
    pub device_id: DeviceId,
    /// Where it stands.
    pub state: OtaState,
    /// Percent (0..=100) as last reported.
    pub progress: Option<u8>,
    /// The last `step` the device reported.
    pub step: Option<i32>,
    /// The failure code (the negative step) once failed.
    pub code: Option<i32>,
    /// The device's `desc` of its last report, or why it failed or was cancelled.
    pub description: Option<String>,
    /// The message id of the inform downlink last issued for it.
    pub message_id: Option<String>,
    /// Creation time.
    pub created_at: Timestamp,
    /// Last change.
    pub updated_at: Timestamp,
}

impl OtaTaskDetail {
    /// A pending detail of `device` in `task`, created at `now`.
    pub fn new(
        tenant_id: TenantId,
        task_id: OtaTaskId,
        package_id: OtaPackageId,
        device_id: DeviceId,
        now: Timestamp,
    ) -> Self {
        Self {
            tenant_id,
            task_id,
            package_id,
            device_id,
            state: OtaState::Pending,
            progress: None,
            step: None,
            code: None,
            description: None,
            message_id: None,
            created_at: now,
            updated_at: now,
        }
    }
}

/// A device's `ota/devices/progress` report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgressReport {
    /// 1..=100 progress; -1 upgrade, -2 download, -3 verify, -4 flash failed.
    pub step: i32,
    /// The device's description.
    pub desc: Option<String>,
    /// The module it reports on.
    pub module: Option<String>,
}

/// Decodes `{"step":"50","desc":"..","module":"MCU"}` (`step` a string, as
/// ThingsPanel devices send it, or a number).
///
/// # Errors
/// [`Error::Invalid`] for anything else, or a step outside -4..=100 or 0.
pub fn parse_progress(payload: &[u8]) -> Result<ProgressReport> {
    #[derive(Deserialize)]
    struct Raw {
        step: serde_json::Value,
        #[serde(default)]
        desc: Option<String>,
        #[serde(default)]
        module: Option<String>,
    }
    let raw: Raw = serde_json::from_slice(payload)
        .map_err(|e| Error::invalid("payload", format!("not an OTA progress report: {e}")))?;
    let step = match &raw.step {
        serde_json::Value::String(s) => s.trim().parse::<i32>().ok(),
        serde_json::Value::Number(n) => n.as_i64().and_then(|n| i32::try_from(n).ok()),
        _ => None,
    };
    match step {
        Some(step @ (-4..=-1 | 1..=100)) => Ok(ProgressReport {
            step,
            desc: raw.desc.filter(|d| !d.is_empty()),
            module: raw.module.filter(|m| !m.is_empty()),
        }),
        _ => Err(Error::invalid(
            "step",
            format!("must be 1..100 or -1..-4, got {}", raw.step),
        )),
    }
}

/// What a failure step means.
pub fn failure_reason(step: i32) -> &'static str {
    match step {
        -1 => "upgrade failed",
        -2 => "download failed",
        -3 => "verification failed",
        -4 => "flashing failed",
        _ => "failed",
    }
}

/// Applies a device's report to its detail: 1..=99 is `upgrading` at that percent,
/// 100 `succeeded`, a negative step `failed` with the step as code and the device's
/// `desc` (or the step's meaning) as description. Returns whether anything changed;
/// a detail that is no longer active is left alone.
pub fn apply_progress(detail: &mut OtaTaskDetail, report: &ProgressReport, now: Timestamp) -> bool {
    if !detail.state.is_active() {
        return false;
    }
    detail.step = Some(report.step);
    detail.updated_at = now;
    match report.step {
        100 => {
            detail.state = OtaState::Succeeded;
            detail.progress = Some(100);
            detail.description = report.desc.clone();
        }
        step if step > 0 => {
            detail.state = OtaState::Upgrading;
            detail.progress = u8::try_from(step).ok();
            detail.description = report.desc.clone();
        }
        step => {
            detail.state = OtaState::Failed;
            detail.code = Some(step);
            detail.description = Some(
                report
                    .desc
                    .clone()
                    .unwrap_or_else(|| failure_reason(step).to_owned()),
            );
        }
    }
    true
}

/// Storage of packages, tasks and their per-device details.
///
/// # Contract
/// - Every read and write is scoped to a tenant: another tenant's rows are never
///   found ([`Error::NotFound`] on update/delete, `None`/empty on reads).
/// - `create_package` of a `(tenant, name, version)` that exists is
///   [`Error::AlreadyExists`] (entity `"ota_package"`); `update_package` likewise.
/// - `delete_package` of a package a task refers to is [`Error::Conflict`].
/// - `create_task` stores the task and its details at once; a package that is not in
///   the tenant is [`Error::NotFound`] and nothing is stored.
/// - Tasks carry their [`OtaCounts`] on every read; lists are newest first.
/// - Implementations must pass `tp_core::testing::ota`.
#[async_trait]
pub trait OtaStore: std::fmt::Debug + Send + Sync + 'static {
    /// Stores a new package.
    async fn create_package(&self, package: &OtaPackage) -> Result<()>;
    /// A package of the tenant.
    async fn get_package(&self, tenant: TenantId, id: OtaPackageId) -> Result<Option<OtaPackage>>;
    /// The tenant's packages, newest first.
    async fn list_packages(&self, tenant: TenantId, page: Page) -> Result<Paged<OtaPackage>>;
    /// Replaces a package (all fields but `id`, `tenant_id`, `created_at`).
    async fn update_package(&self, package: &OtaPackage) -> Result<()>;
    /// Deletes a package no task refers to.
    async fn delete_package(&self, tenant: TenantId, id: OtaPackageId) -> Result<()>;

    /// Stores a task and the details of its devices.
    async fn create_task(&self, task: &OtaTask, details: &[OtaTaskDetail]) -> Result<()>;
    /// A task of the tenant, with its counts.
    async fn get_task(&self, tenant: TenantId, id: OtaTaskId) -> Result<Option<OtaTask>>;
    /// The tenant's tasks (of one package, when given), newest first.
    async fn list_tasks(
        &self,
        tenant: TenantId,
        package: Option<OtaPackageId>,
        page: Page,
    ) -> Result<Paged<OtaTask>>;
    /// Deletes a task and its details.
    async fn delete_task(&self, tenant: TenantId, id: OtaTaskId) -> Result<()>;

    /// A task's details, in creation order (then by device id).
    async fn list_details(
        &self,
        tenant: TenantId,
        task: OtaTaskId,
        page: Page,
    ) -> Result<Paged<OtaTaskDetail>>;
    /// One device's detail in a task.
    async fn get_detail(
        &self,
        tenant: TenantId,
        task: OtaTaskId,
        device: DeviceId,
    ) -> Result<Option<OtaTaskDetail>>;
    /// Replaces a detail's state fields (keyed by tenant, task and device).
    async fn update_detail(&self, detail: &OtaTaskDetail) -> Result<()>;
    /// The device's details that are still active, newest task first.
    async fn active_details(
        &self,
        tenant: TenantId,
        device: DeviceId,
    ) -> Result<Vec<OtaTaskDetail>>;
    /// The device's newest detail for a task of `package` that is not cancelled:
    /// what entitles the device to download the package.
    async fn package_detail(
        &self,
        tenant: TenantId,
        device: DeviceId,
        package: OtaPackageId,
    ) -> Result<Option<OtaTaskDetail>>;
}

/// Shared handle to an OTA store.
pub type OtaStoreRef = Arc<dyn OtaStore>;

#[cfg(test)]
mod tests {
    use super::*;

    fn detail() -> OtaTaskDetail {
        OtaTaskDetail::new(
            TenantId::new(),
            OtaTaskId::new(),
            OtaPackageId::new(),
            DeviceId::new(),
            0,
        )
    }

    #[test]
    fn progress_steps_map_to_states() {
        let mut d = detail();
        let r = parse_progress(br#"{"step":"1"}"#).unwrap();
        assert!(apply_progress(&mut d, &r, 1));
        assert_eq!((d.state, d.progress), (OtaState::Upgrading, Some(1)));
        let r = parse_progress(br#"{"step":100,"desc":"done"}"#).unwrap();
        assert!(apply_progress(&mut d, &r, 2));
        assert_eq!(d.state, OtaState::Succeeded);
        // finished details ignore later reports
        let r = parse_progress(br#"{"step":"-1"}"#).unwrap();
        assert!(!apply_progress(&mut d, &r, 3));
        assert_eq!(d.state, OtaState::Succeeded);
        for (step, reason) in [
            (-1, "upgrade"),
            (-2, "download"),
            (-3, "verif"),
            (-4, "flash"),
        ] {
            let mut d = detail();
            let r = parse_progress(format!(r#"{{"step":"{step}"}}"#).as_bytes()).unwrap();
            apply_progress(&mut d, &r, 1);
            assert_eq!((d.state, d.code), (OtaState::Failed, Some(step)));
            assert!(d.description.unwrap().contains(reason));
        }
    }

    #[test]
    fn bad_steps_are_refused() {
        for bad in [
            r#"{"step":"0"}"#,
            r#"{"step":"101"}"#,
            r#"{"step":"-5"}"#,
            r#"{"step":"x"}"#,
            r#"{"step":true}"#,
            r#"{}"#,
            "not json",
        ] {
            assert!(parse_progress(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn task_status_follows_devices() {
        let mut c = OtaCounts::default();
        c.add(OtaState::Notified, 1);
        c.add(OtaState::Succeeded, 1);
        assert_eq!(c.status(), OtaTaskStatus::InProgress);
        c.notified = 0;
        assert_eq!(c.status(), OtaTaskStatus::Succeeded);
        c.add(OtaState::Cancelled, 1);
        assert_eq!(c.status(), OtaTaskStatus::Completed);
        c.add(OtaState::Failed, 1);
        assert_eq!(c.status(), OtaTaskStatus::Failed);
        let mut c = OtaCounts::default();
        c.add(OtaState::Cancelled, 2);
        assert_eq!(c.status(), OtaTaskStatus::Cancelled);
    }

    #[test]
    fn inform_payload_is_thingspanels() {
        let p = OtaPackage {
            id: OtaPackageId::new(),
            tenant_id: TenantId::new(),
            name: "fw".into(),
            version: "1.2.0".into(),
            module: "MCU".into(),
            profile_id: None,
            description: None,
            ext_data: None,
            sign_method: None,
            sign: None,
            url: None,
            stored: true,
            size: Some(42),
            sha256: Some("ab".into()),
            md5: Some("cd".into()),
            file_name: None,
            created_at: 0,
            updated_at: 0,
        };
        let v = inform_payload("t1", &p, "http://h/x");
        assert_eq!(v["code"], 200);
        assert_eq!(v["id"], "t1");
        assert_eq!(v["params"]["size"], "42");
        assert_eq!(v["params"]["signMethod"], "SHA256");
        assert_eq!(v["params"]["sign"], "ab");
        assert_eq!(v["params"]["module"], "MCU");
        assert_eq!(v["params"]["url"], "http://h/x");
        assert!(v["params"]["extData"].is_object());
    }
}
