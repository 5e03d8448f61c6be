//! Helpers shared by the route modules: paging, names and the audit log.

use serde::Deserialize;
use tp_core::{AuditEntry, AuditId, Page, TenantId, now_ms};
use utoipa::IntoParams;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// Largest `page` number of a list (the OpenAPI document declares it).
pub(crate) const MAX_PAGE: u64 = 1_000_000_000;

/// Largest `page_size` of a list.
pub(crate) const MAX_PAGE_SIZE: u64 = 1000;

/// Paging of a list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct PageQuery {
    /// Page number, from 1 (default 1).
    #[param(minimum = 1, maximum = 1000000000)]
    pub(crate) page: Option<u64>,
    /// Rows per page, 1 to 1000 (default 20).
    #[param(minimum = 1, maximum = 1000)]
    pub(crate) page_size: Option<u64>,
}

/// Checks `page` and `page_size` and turns them into a store [`Page`].
pub(crate) fn page_of(page: Option<u64>, page_size: Option<u64>) -> ApiResult<Page> {
    let page = page.unwrap_or(1);
    if page == 0 {
        return Err(ApiError::invalid("page", "must be at least 1"));
    }
    if page > MAX_PAGE {
        return Err(ApiError::invalid(
            "page",
            format!("must be at most {MAX_PAGE}"),
        ));
    }
    let page_size = page_size.unwrap_or(20);
    if !(1..=MAX_PAGE_SIZE).contains(&page_size) {
        return Err(ApiError::invalid(
            "page_size",
            format!("must be 1 to {MAX_PAGE_SIZE}"),
        ));
    }
    let offset = (page - 1)
        .checked_mul(page_size)
        .filter(|o| *o <= i64::MAX as u64)
        .ok_or_else(|| ApiError::invalid("page", "too large"))?;
    Ok(Page {
        offset,
        limit: page_size,
    })
}

/// Whether `c` is what the document's `\s` means: the white space and line
/// terminators of JSON Schema's (ECMA-262) regular expressions, which is what
/// generated clients and testers check patterns with.
pub(crate) fn is_blank(c: char) -> bool {
    matches!(
        c,
        '\t' | '\n' | '\u{b}' | '\u{c}' | '\r' | ' ' | '\u{a0}' | '\u{1680}' | '\u{2000}'
            ..='\u{200a}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{202f}'
                | '\u{205f}'
                | '\u{3000}'
                | '\u{feff}'
    )
}

/// A display name of 1 to 255 characters, blanks ([`is_blank`]) trimmed: what the
/// document's `pattern: \S` with `maxLength: 255` accepts.
pub(crate) fn valid_name(field: &str, name: &str) -> ApiResult<String> {
    let name = name.trim_matches(is_blank);
    let len = name.chars().count();
    if len == 0 || len > 255 {
        return Err(ApiError::invalid(field, "must be 1 to 255 characters"));
    }
    Ok(name.to_owned())
}

/// Appends to `tenant`'s audit log what `caller` did. A failure to append is logged
/// and does not undo (or fail) the change it describes.
pub(crate) async fn audit(
    state: &AppState,
    caller: &Caller,
    tenant: TenantId,
    action: &str,
    resource_type: &str,
    resource_id: impl ToString,
    detail: serde_json::Value,
) {
    let entry = AuditEntry {
        id: AuditId::new(),
        tenant_id: tenant,
        user_id: caller.user_id(),
        actor: caller.actor(),
        action: action.to_owned(),
        resource_type: resource_type.to_owned(),
        resource_id: resource_id.to_string(),
        detail,
        at: now_ms(),
    };
    if let Err(e) = state.access.append_audit(&entry).await {
        tracing::error!(error = %e, action, "Cannot append to the audit log.");
    }
}
