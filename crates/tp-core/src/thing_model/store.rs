//! The [`ThingModelStore`] contract.

use std::sync::Arc;

use async_trait::async_trait;

use super::{DeviceTemplate, TemplateId};
use crate::Result;
use crate::model::{Page, Paged, ProfileId, TenantId};

/// Persistent device templates with their thing-model definitions.
///
/// # Contract
/// - Every call is tenant-scoped in the store: another tenant's template is
///   [`crate::Error::NotFound`] (or `None`), never returned or changed.
/// - Template names are unique per tenant: a duplicate is
///   [`crate::Error::AlreadyExists`] `{ entity: "template" }`.
/// - The definitions round-trip exactly (order, every field).
/// - `delete_template` of a template a device profile refers to is
///   [`crate::Error::Conflict`].
/// - Implementations must pass every case of `tp_core::testing::thing_model`.
#[async_trait]
pub trait ThingModelStore: std::fmt::Debug + Send + Sync + 'static {
    /// Creates a template.
    async fn create_template(&self, template: &DeviceTemplate) -> Result<()>;
    /// Looks a template of a tenant up.
    async fn get_template(
        &self,
        tenant: TenantId,
        id: TemplateId,
    ) -> Result<Option<DeviceTemplate>>;
    /// A tenant's templates by name (with their definitions).
    async fn list_templates(&self, tenant: TenantId, page: Page) -> Result<Paged<DeviceTemplate>>;
    /// Replaces a template's name, description, validation settings and
    /// definitions and sets `updated_at`; `created_at` stays. Scoped by
    /// `template.tenant_id`.
    async fn update_template(&self, template: &DeviceTemplate) -> Result<()>;
    /// Deletes a template no profile refers to.
    async fn delete_template(&self, tenant: TenantId, id: TemplateId) -> Result<()>;
    /// The template the profile `profile` of `tenant` refers to, if the profile
    /// exists and refers to one (the ingest path's lookup, one round trip).
    async fn template_of_profile(
        &self,
        tenant: TenantId,
        profile: ProfileId,
    ) -> Result<Option<DeviceTemplate>>;
}

/// Shared handle to a thing-model store.
pub type ThingModelStoreRef = Arc<dyn ThingModelStore>;
