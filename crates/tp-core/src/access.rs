//! The [`AccessStore`] contract: what multi-tenant access control keeps besides
//! users and devices: tenant lifecycle, custom roles and their assignment, API keys,
//! device groups, device profiles and the audit log.

use std::sync::Arc;

use async_trait::async_trait;

use crate::Result;
use crate::model::*;

/// Persistent access-control data of every tenant.
///
/// # Contract
/// - Every tenant-scoped call filters by tenant in the store itself: another
///   tenant's row is [`crate::Error::NotFound`] (or `None`), never returned or changed.
/// - Unique names (role per tenant, group per parent, profile per tenant, key hash)
///   are enforced by the store: violations are [`crate::Error::AlreadyExists`].
/// - Implementations must pass every case of `tp_core::testing::access`.
#[async_trait]
pub trait AccessStore: std::fmt::Debug + Send + Sync + 'static {
    /// Stable backend name.
    fn backend(&self) -> &'static str;

    /// Renames a tenant.
    async fn update_tenant(&self, tenant: &Tenant) -> Result<()>;
    /// Deletes a tenant and every row that belongs to it (users, devices, roles, keys,
    /// groups, profiles, audit entries, attributes, downlink log).
    async fn delete_tenant(&self, id: TenantId) -> Result<()>;

    /// The custom role assigned to a user, if any.
    async fn get_user_role(&self, tenant: TenantId, user: UserId) -> Result<Option<RoleId>>;
    /// Assigns (or with `None` clears) a user's custom role; the role must belong to
    /// the user's tenant.
    async fn set_user_role(
        &self,
        tenant: TenantId,
        user: UserId,
        role: Option<RoleId>,
    ) -> Result<()>;

    /// Creates a custom role; the name is unique per tenant.
    async fn create_role(&self, role: &CustomRole) -> Result<()>;
    /// Looks a role of a tenant up.
    async fn get_role(&self, tenant: TenantId, id: RoleId) -> Result<Option<CustomRole>>;
    /// A tenant's roles by name.
    async fn list_roles(&self, tenant: TenantId, page: Page) -> Result<Paged<CustomRole>>;
    /// Replaces a role's name and permissions; scoped by `role.tenant_id`.
    async fn update_role(&self, role: &CustomRole) -> Result<()>;
    /// Deletes a role; [`crate::Error::Conflict`] while users or API keys use it.
    async fn delete_role(&self, tenant: TenantId, id: RoleId) -> Result<()>;

    /// Stores an API key (its hash is unique).
    async fn create_api_key(&self, key: &ApiKey) -> Result<()>;
    /// Looks a key up by [`crate::hash_secret`] of the presented key (authentication path).
    async fn get_api_key_by_hash(&self, key_hash: &str) -> Result<Option<ApiKey>>;
    /// A tenant's keys, newest first.
    async fn list_api_keys(&self, tenant: TenantId, page: Page) -> Result<Paged<ApiKey>>;
    /// Revokes a key.
    async fn delete_api_key(&self, tenant: TenantId, id: ApiKeyId) -> Result<()>;

    /// Creates a group; its parent, if any, must be a group of the same tenant
    /// ([`crate::Error::NotFound`] otherwise); names are unique among siblings.
    async fn create_group(&self, group: &DeviceGroup) -> Result<()>;
    /// Looks a group of a tenant up.
    async fn get_group(&self, tenant: TenantId, id: GroupId) -> Result<Option<DeviceGroup>>;
    /// Every group of a tenant (the caller builds the tree), by name.
    async fn list_groups(&self, tenant: TenantId) -> Result<Vec<DeviceGroup>>;
    /// Renames or moves a group; moving under itself or a descendant is
    /// [`crate::Error::Conflict`].
    async fn update_group(&self, group: &DeviceGroup) -> Result<()>;
    /// Deletes a group with its memberships; [`crate::Error::Conflict`] while it has children.
    async fn delete_group(&self, tenant: TenantId, id: GroupId) -> Result<()>;
    /// Puts a device of the tenant into a group of the tenant (idempotent).
    async fn add_group_device(
        &self,
        tenant: TenantId,
        group: GroupId,
        device: DeviceId,
    ) -> Result<()>;
    /// Takes a device out of a group; returns whether it was in it.
    async fn remove_group_device(
        &self,
        tenant: TenantId,
        group: GroupId,
        device: DeviceId,
    ) -> Result<bool>;
    /// The devices directly in a group, by creation time.
    async fn list_group_devices(
        &self,
        tenant: TenantId,
        group: GroupId,
        page: Page,
    ) -> Result<Paged<Device>>;

    /// Creates a device profile; the name is unique per tenant.
    async fn create_profile(&self, profile: &DeviceProfile) -> Result<()>;
    /// Looks a profile of a tenant up.
    async fn get_profile(&self, tenant: TenantId, id: ProfileId) -> Result<Option<DeviceProfile>>;
    /// The profile (of any tenant) whose `provision_secret_hash` is `hash`, for device
    /// self-registration.
    async fn get_profile_by_provision_secret(&self, hash: &str) -> Result<Option<DeviceProfile>>;
    /// A tenant's profiles by name.
    async fn list_profiles(&self, tenant: TenantId, page: Page) -> Result<Paged<DeviceProfile>>;
    /// Replaces a profile's mutable fields; scoped by `profile.tenant_id`.
    async fn update_profile(&self, profile: &DeviceProfile) -> Result<()>;
    /// Deletes a profile; [`crate::Error::Conflict`] while devices use it.
    async fn delete_profile(&self, tenant: TenantId, id: ProfileId) -> Result<()>;

    /// Appends to the audit log.
    async fn append_audit(&self, entry: &AuditEntry) -> Result<()>;
    /// A tenant's audit log, newest first.
    async fn list_audit(&self, tenant: TenantId, page: Page) -> Result<Paged<AuditEntry>>;
}

/// Shared handle to an access store.
pub type AccessStoreRef = Arc<dyn AccessStore>;
