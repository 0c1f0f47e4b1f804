//! Checks of commands against the named limits. Pure; used at the edge and again in apply.

use super::limits::*;
use super::types::*;

fn violation(reason: &str, message: String) -> LimitViolation {
    LimitViolation { reason: reason.to_string(), message }
}

pub fn validate_key(key: &RecordKey) -> Result<(), LimitViolation> {
    validate_namespace(&key.namespace)?;
    let key_len = key.key.len();
    if key_len == 0 {
        return Err(violation("KEY_EMPTY", "key is empty; it must be 1..=512 bytes (KEY_BYTES_MAX)".to_string()));
    }
    if key_len > KEY_BYTES_MAX {
        return Err(violation(
            "KEY_TOO_LONG",
            format!("key is {key_len} bytes; the limit is {KEY_BYTES_MAX} bytes (KEY_BYTES_MAX)"),
        ));
    }
    Ok(())
}

/// Checks a namespace: 1..=NAMESPACE_BYTES_MAX bytes of `[A-Za-z0-9._-]`.
pub fn validate_namespace(namespace: &str) -> Result<(), LimitViolation> {
    let namespace_len = namespace.len();
    if namespace_len == 0 || namespace_len > NAMESPACE_BYTES_MAX {
        return Err(violation(
            "NAMESPACE_INVALID",
            format!(
                "namespace is {namespace_len} bytes; it must be 1..={NAMESPACE_BYTES_MAX} bytes (NAMESPACE_BYTES_MAX)"
            ),
        ));
    }
    if let Some(bad) = namespace.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        return Err(violation(
            "NAMESPACE_INVALID",
            format!("namespace contains {bad:?}; only [A-Za-z0-9._-] is allowed"),
        ));
    }
    Ok(())
}

fn check_lease(lease_ms: u64) -> Result<(), LimitViolation> {
    if !(LEASE_MS_MIN..=LEASE_MS_MAX).contains(&lease_ms) {
        return Err(violation(
            "LEASE_OUT_OF_RANGE",
            format!("lease_ms is {lease_ms}; it must be {LEASE_MS_MIN}..={LEASE_MS_MAX} (LEASE_MS_MIN..=LEASE_MS_MAX)"),
        ));
    }
    Ok(())
}

fn check_retention(retention_ms: Option<u64>) -> Result<(), LimitViolation> {
    match retention_ms {
        Some(ms) if !(RETENTION_MS_MIN..=RETENTION_MS_MAX).contains(&ms) => Err(violation(
            "RETENTION_OUT_OF_RANGE",
            format!(
                "retention_ms is {ms}; it must be {RETENTION_MS_MIN}..={RETENTION_MS_MAX} (RETENTION_MS_MIN..=RETENTION_MS_MAX), or 0 for the default"
            ),
        )),
        _ => Ok(()),
    }
}

fn check_len(reason: &str, field: &str, len: usize, max: usize, limit_name: &str) -> Result<(), LimitViolation> {
    if len > max {
        return Err(violation(reason, format!("{field} is {len} bytes; the limit is {max} bytes ({limit_name})")));
    }
    Ok(())
}

fn check_token(token: FencingToken) -> Result<(), LimitViolation> {
    if token.0 == 0 {
        return Err(violation("TOKEN_INVALID", "token is 0; pass the token a claim returned".to_string()));
    }
    Ok(())
}

pub fn validate_command(command: &Command) -> Result<(), LimitViolation> {
    validate_key(command.key())?;
    match command {
        Command::Claim(c) => {
            if c.owner.is_empty() {
                return Err(violation(
                    "OWNER_EMPTY",
                    "owner is empty; name who is claiming (1..=128 bytes)".to_string(),
                ));
            }
            check_len("OWNER_TOO_LONG", "owner", c.owner.len(), OWNER_BYTES_MAX, "OWNER_BYTES_MAX")?;
            check_lease(c.lease_ms)?;
            if let Some(fingerprint) = &c.fingerprint {
                check_len(
                    "FINGERPRINT_TOO_LONG",
                    "fingerprint",
                    fingerprint.len(),
                    FINGERPRINT_BYTES_MAX,
                    "FINGERPRINT_BYTES_MAX",
                )?;
            }
            if let Some(request_id) = &c.request_id {
                check_len(
                    "REQUEST_ID_TOO_LONG",
                    "claim_request_id",
                    request_id.len(),
                    REQUEST_ID_BYTES_MAX,
                    "REQUEST_ID_BYTES_MAX",
                )?;
            }
            check_retention(c.retention_ms)
        }
        Command::Complete(c) => {
            check_token(c.token)?;
            check_len(
                "OUTCOME_TOO_LARGE",
                "outcome payload",
                c.outcome.payload.len(),
                OUTCOME_BYTES_MAX,
                "OUTCOME_BYTES_MAX",
            )?;
            check_retention(c.retention_ms)
        }
        Command::Release(c) => {
            check_token(c.token)?;
            check_len(
                "CHECKPOINT_TOO_LARGE",
                "checkpoint",
                c.checkpoint.len(),
                CHECKPOINT_BYTES_MAX,
                "CHECKPOINT_BYTES_MAX",
            )
        }
        Command::ExtendLease(c) => {
            check_token(c.token)?;
            check_lease(c.lease_ms)?;
            let checkpoint_len = c.checkpoint.as_ref().map_or(0, Vec::len);
            check_len(
                "CHECKPOINT_TOO_LARGE",
                "checkpoint",
                checkpoint_len,
                CHECKPOINT_BYTES_MAX,
                "CHECKPOINT_BYTES_MAX",
            )
        }
        Command::Forget(c) | Command::ForceRelease(c) => validate_operator_command(c),
    }
}

fn validate_operator_command(command: &OperatorCommand) -> Result<(), LimitViolation> {
    if command.reason.is_empty() {
        return Err(violation(
            "REASON_EMPTY",
            format!("reason is empty; say why (1..={AUDIT_REASON_BYTES_MAX} bytes, AUDIT_REASON_BYTES_MAX)"),
        ));
    }
    check_len("REASON_TOO_LONG", "reason", command.reason.len(), AUDIT_REASON_BYTES_MAX, "AUDIT_REASON_BYTES_MAX")?;
    check_len("OPERATOR_TOO_LONG", "operator", command.operator.len(), OWNER_BYTES_MAX, "OWNER_BYTES_MAX")
}

/// Checks the size of a page asked of a listing: 1..=`max` items.
fn check_page(reason: &str, field: &str, limit: usize, max: usize, limit_name: &str) -> Result<(), LimitViolation> {
    if limit == 0 || limit > max {
        return Err(violation(reason, format!("{field} is {limit}; it must be 1..={max} ({limit_name})")));
    }
    Ok(())
}

/// Checks a key listing: the namespace, the key prefix (at most KEY_BYTES_MAX bytes) and the
/// page size (1..=KEY_LIST_PAGE_MAX).
pub fn validate_key_list(namespace: &str, key_prefix: &[u8], limit: usize) -> Result<(), LimitViolation> {
    validate_namespace(namespace)?;
    check_len("KEY_TOO_LONG", "key prefix", key_prefix.len(), KEY_BYTES_MAX, "KEY_BYTES_MAX")?;
    check_page("PAGE_SIZE_OUT_OF_RANGE", "limit", limit, KEY_LIST_PAGE_MAX, "KEY_LIST_PAGE_MAX")
}

/// Checks the page size of an audit-trail read (1..=AUDIT_PAGE_MAX).
pub fn validate_audit_page(limit: usize) -> Result<(), LimitViolation> {
    check_page("PAGE_SIZE_OUT_OF_RANGE", "limit", limit, AUDIT_PAGE_MAX, "AUDIT_PAGE_MAX")
}

/// Checks a wait request against [`WAIT_MS_MAX`].
pub fn validate_wait_ms(wait_ms: u64) -> Result<(), LimitViolation> {
    if wait_ms > WAIT_MS_MAX {
        return Err(violation(
            "WAIT_MS_OUT_OF_RANGE",
            format!("wait_ms is {wait_ms}; the limit is {WAIT_MS_MAX} ms (WAIT_MS_MAX)"),
        ));
    }
    Ok(())
}
