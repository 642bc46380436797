//! Validation of names and free text shared by the API and the state machine.

/// Longest service or region name accepted.
pub const MAX_NAME_LEN: usize = 63;
/// Longest reason accepted.
pub const MAX_REASON_LEN: usize = 1024;

/// Checks a service or region name: 1-63 characters of `a-z`, `0-9` and `-`, starting with a
/// letter or digit (a DNS label, so names fit in hostnames, metrics and file names).
pub fn check_name(kind: &str, name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!(
            "{kind} name is empty: give a name such as `payments`"
        ));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "{kind} name is {} characters long; the limit is {MAX_NAME_LEN}",
            name.len()
        ));
    }
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
    if let Some(bad) = name.chars().find(|c| !ok_char(*c)) {
        return Err(format!(
            "{kind} name {name:?} contains {bad:?}; use lowercase letters, digits and '-'"
        ));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err(format!(
            "{kind} name {name:?} must start and end with a letter or digit"
        ));
    }
    Ok(())
}

/// Checks an operator's reason: required, at most 1024 characters.
pub fn check_reason(reason: &str) -> Result<(), String> {
    if reason.trim().is_empty() {
        return Err("a reason is required: say why (it goes into the audit trail)".into());
    }
    if reason.len() > MAX_REASON_LEN {
        return Err(format!(
            "reason is {} bytes long; the limit is {MAX_REASON_LEN}",
            reason.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_dns_label_rules() {
        assert!(check_name("service", "payments").is_ok());
        assert!(check_name("region", "us-east-1").is_ok());
        assert!(check_name("service", "").is_err());
        assert!(check_name("service", "Payments").is_err());
        assert!(check_name("service", "-x").is_err());
        assert!(check_name("service", "x-").is_err());
        assert!(check_name("service", "a_b").is_err());
        assert!(check_name("service", &"a".repeat(64)).is_err());
        assert!(check_name("service", &"a".repeat(63)).is_ok());
    }

    #[test]
    fn reasons_are_required_and_bounded() {
        assert!(check_reason("drill").is_ok());
        assert!(check_reason("  ").is_err());
        assert!(check_reason(&"x".repeat(1025)).is_err());
    }
}
