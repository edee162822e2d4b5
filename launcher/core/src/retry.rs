//! AWS Batch `evaluateOnExit`: which failed attempts are retried.

use crate::job::FailReason;
use launcher_proto::{ExitAction, ExitRule, RetrySpec};

/// AWS's glob: exact, or a prefix when the pattern ends in `*`.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => text.starts_with(prefix),
        None => pattern == text,
    }
}

fn rule_matches(rule: &ExitRule, code: i32, fail: &FailReason) -> bool {
    rule.on_exit_code.as_deref().is_none_or(|p| glob_match(p, &code.to_string()))
        && rule.on_reason.as_deref().is_none_or(|p| glob_match(p, fail.code()))
        && rule.on_status_reason.as_deref().is_none_or(|p| glob_match(p, &fail.text()))
}

/// Whether a failed attempt may be retried (attempts left is the caller's
/// check). Timeouts and cancellations never are; otherwise the first rule
/// that matches decides, and no match means retry.
pub fn should_retry(retry: &RetrySpec, code: i32, fail: &FailReason) -> bool {
    if matches!(
        fail,
        FailReason::Timeout
            | FailReason::Cancelled
            | FailReason::DependencyNeverSatisfied { .. }
            | FailReason::ChildrenFailed { .. }
    ) {
        return false;
    }
    match retry.evaluate_on_exit.iter().find(|r| rule_matches(r, code, fail)) {
        Some(r) => r.action == ExitAction::Retry,
        None => true,
    }
}

/// Check a retry strategy; the error says what to fix.
pub fn validate_retry(retry: &RetrySpec) -> Result<(), String> {
    if !(1..=10).contains(&retry.attempts) {
        return Err(format!("--attempts {} must be between 1 and 10", retry.attempts));
    }
    if retry.evaluate_on_exit.len() > 5 {
        return Err(format!("{} --retry-on rules given; at most 5 are allowed", retry.evaluate_on_exit.len()));
    }
    for r in &retry.evaluate_on_exit {
        if r.on_exit_code.is_none() && r.on_reason.is_none() && r.on_status_reason.is_none() {
            return Err("a --retry-on rule needs at least one of exit=, reason=, status=".into());
        }
        for (what, p, ok) in [
            ("exit", &r.on_exit_code, "digits" as &str),
            ("reason", &r.on_reason, "letters, digits, '.', ':' and spaces"),
            ("status", &r.on_status_reason, "letters, digits, '.', ':' and spaces"),
        ] {
            let Some(p) = p else { continue };
            if p.is_empty() || p.len() > 512 {
                return Err(format!("--retry-on {what}= pattern must be 1 to 512 characters"));
            }
            let body = p.strip_suffix('*').unwrap_or(p);
            let valid = if what == "exit" {
                body.chars().all(|c| c.is_ascii_digit())
            } else {
                body.chars().all(|c| c.is_ascii_alphanumeric() || ".: ".contains(c))
            };
            if !valid || body.contains('*') {
                return Err(format!(
                    "--retry-on {what}={p:?}: use {ok}, optionally ending in a single '*' (prefix match)"
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use launcher_proto::ExitStatus;

    fn rule(action: ExitAction, code: Option<&str>, reason: Option<&str>) -> ExitRule {
        ExitRule {
            action,
            on_exit_code: code.map(Into::into),
            on_reason: reason.map(Into::into),
            on_status_reason: None,
        }
    }

    #[test]
    fn globs_are_exact_or_prefix() {
        assert!(glob_match("137", "137"));
        assert!(!glob_match("13", "137"));
        assert!(glob_match("1*", "137"));
        assert!(glob_match("*", ""));
        assert!(!glob_match("2*", "137"));
    }

    #[test]
    fn first_match_decides_and_no_match_retries() {
        let fail = FailReason::NonZeroExit { rank: 0, status: ExitStatus::Code(3) };
        let spec = RetrySpec {
            attempts: 3,
            evaluate_on_exit: vec![rule(ExitAction::Retry, Some("3"), None), rule(ExitAction::Exit, None, Some("*"))],
        };
        assert!(should_retry(&spec, 3, &fail));
        assert!(!should_retry(&spec, 4, &fail), "the catch-all EXIT stops other codes");
        let none = RetrySpec { attempts: 3, evaluate_on_exit: vec![rule(ExitAction::Exit, Some("9"), None)] };
        assert!(should_retry(&none, 3, &fail), "no rule matches: retry (AWS default)");
        let node = FailReason::NodeFail { node: "n1".into() };
        let on_node = RetrySpec { attempts: 3, evaluate_on_exit: vec![rule(ExitAction::Exit, None, Some("NonZero*"))] };
        assert!(should_retry(&on_node, 255, &node));
        assert!(!should_retry(&on_node, 3, &fail));
    }

    #[test]
    fn timeouts_and_cancels_are_never_retried() {
        let spec = RetrySpec { attempts: 5, evaluate_on_exit: vec![] };
        assert!(!should_retry(&spec, 143, &FailReason::Timeout));
        assert!(!should_retry(&spec, 143, &FailReason::Cancelled));
    }

    #[test]
    fn bad_rules_are_named() {
        let mut s = RetrySpec { attempts: 11, evaluate_on_exit: vec![] };
        assert!(validate_retry(&s).unwrap_err().contains("between 1 and 10"));
        s.attempts = 2;
        s.evaluate_on_exit = vec![rule(ExitAction::Retry, Some("1x"), None)];
        assert!(validate_retry(&s).unwrap_err().contains("exit=\"1x\""));
        s.evaluate_on_exit = vec![rule(ExitAction::Retry, None, None)];
        assert!(validate_retry(&s).unwrap_err().contains("at least one"));
        s.evaluate_on_exit = vec![rule(ExitAction::Retry, Some("1*"), Some("Node*"))];
        validate_retry(&s).unwrap();
    }
}
