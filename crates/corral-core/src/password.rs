//! The brief's password policy: at least 8 characters with upper case, lower case,
//! a digit and a symbol. Each failed rule is reported by name so the API and the UI
//! can tell the user exactly what to fix.

use serde::Serialize;
use utoipa::ToSchema;

pub const MIN_LEN: usize = 8;
/// Argon2 work grows with input length; an upper bound keeps a login request cheap to refuse.
pub const MAX_LEN: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    MinLength,
    MaxLength,
    Uppercase,
    Lowercase,
    Digit,
    Symbol,
}

impl Rule {
    pub fn describe(self) -> String {
        match self {
            Rule::MinLength => format!("at least {MIN_LEN} characters"),
            Rule::MaxLength => format!("at most {MAX_LEN} characters"),
            Rule::Uppercase => "an upper-case letter".into(),
            Rule::Lowercase => "a lower-case letter".into(),
            Rule::Digit => "a digit".into(),
            Rule::Symbol => "a symbol (e.g. !@#$%)".into(),
        }
    }
}

/// Returns every rule the password breaks, in a stable order; empty means it is acceptable.
pub fn check(password: &str) -> Vec<Rule> {
    let mut failed = Vec::new();
    let len = password.chars().count();
    if len < MIN_LEN {
        failed.push(Rule::MinLength);
    }
    if len > MAX_LEN {
        failed.push(Rule::MaxLength);
    }
    if !password.chars().any(char::is_uppercase) {
        failed.push(Rule::Uppercase);
    }
    if !password.chars().any(char::is_lowercase) {
        failed.push(Rule::Lowercase);
    }
    if !password.chars().any(|c| c.is_ascii_digit()) {
        failed.push(Rule::Digit);
    }
    if !password
        .chars()
        .any(|c| !c.is_alphanumeric() && !c.is_whitespace())
    {
        failed.push(Rule::Symbol);
    }
    failed
}

/// One sentence naming every failed rule, e.g. "password must contain a digit and a symbol (e.g. !@#$%)".
pub fn explain(failed: &[Rule]) -> String {
    let parts: Vec<String> = failed.iter().map(|r| r.describe()).collect();
    let list = match parts.as_slice() {
        [] => return "password is acceptable".into(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    };
    format!("password must contain {list}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brief_example_passes() {
        assert!(check("SecurePass123!").is_empty());
    }

    #[test]
    fn each_rule_named() {
        assert_eq!(check("Sh0rt!"), vec![Rule::MinLength]);
        assert_eq!(check("securepass123!"), vec![Rule::Uppercase]);
        assert_eq!(check("SECUREPASS123!"), vec![Rule::Lowercase]);
        assert_eq!(check("SecurePass!!!"), vec![Rule::Digit]);
        assert_eq!(check("SecurePass123"), vec![Rule::Symbol]);
        assert_eq!(
            check(&format!("Aa1!{}", "x".repeat(300))),
            vec![Rule::MaxLength]
        );
    }

    #[test]
    fn explanation_lists_rules() {
        let msg = explain(&check("password"));
        assert!(msg.contains("upper-case") && msg.contains("digit") && msg.contains("symbol"));
    }

    #[test]
    fn unicode_letters_count() {
        assert!(check("Ünïcødé1!").is_empty());
    }
}
