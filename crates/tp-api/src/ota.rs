//! What the OTA routes need beyond the other stores: the [`OtaStore`], where uploaded
//! packages are kept and how large they may be, and how devices reach this node to
//! download them.

use std::path::{Path, PathBuf};

use tp_core::OtaPackageId;
use tp_core::ota::OtaStoreRef;

/// Largest accepted package upload by default: 256 MiB.
pub const DEFAULT_MAX_PACKAGE_BYTES: u64 = 256 * 1024 * 1024;

/// The OTA part of the API ([`crate::state::AppState::with_ota`]).
#[derive(Debug, Clone)]
pub struct OtaService {
    /// Packages, tasks and per-device details (the metadata database).
    pub store: OtaStoreRef,
    /// Where uploaded package files live (`<data_dir>/ota`); one file per package,
    /// named by its id. Nodes of a cluster that serve downloads must share it.
    pub dir: PathBuf,
    /// Largest accepted upload in bytes; larger ones are refused with 413.
    pub max_package_bytes: u64,
    /// The base URL devices download from (`https://iot.example.com`); when unset,
    /// `http(s)://<Host of the request that created the task>`.
    pub public_url: Option<String>,
    /// Whether the node serves HTTPS (the scheme of a URL built from `Host`).
    pub https: bool,
}

impl OtaService {
    /// The service over `store`, keeping files in `dir`, with the default limit.
    pub fn new(store: OtaStoreRef, dir: impl Into<PathBuf>) -> Self {
        Self {
            store,
            dir: dir.into(),
            max_package_bytes: DEFAULT_MAX_PACKAGE_BYTES,
            public_url: None,
            https: false,
        }
    }

    /// The file of a stored package.
    pub fn package_file(&self, id: OtaPackageId) -> PathBuf {
        package_file(&self.dir, id)
    }
}

/// The file of a stored package under `dir` (shared with the device download route).
pub fn package_file(dir: &Path, id: OtaPackageId) -> PathBuf {
    dir.join(id.to_string())
}

/// The path devices download a stored package from, on the node's HTTP server
/// (served by tp-broker's HTTP device API with the device's own credentials).
pub fn download_path(id: OtaPackageId) -> String {
    format!("/api/v1/device/ota/packages/{id}")
}
