//! The reserved arguments of PROTOCOL.md section 8, taken out of a
//! request before its handler sees it, and the texts of the errors they
//! can give.
//!
//! [`take_reserved`] finds `@after`, `@keep`, `@use:NAME` and `@deadline`
//! among a request's arguments, removes them, and says what they ask for;
//! the request [`Lifecycle`](crate::lifecycle::Lifecycle) then decides what
//! may run, what is held and what fails. A request without reserved
//! arguments costs one scan of its argument names.
//!
//! ```
//! use wiremux_proto::schedule::take_reserved;
//! use wiremux_proto::Request;
//!
//! let mut req = Request::new("add").with_arg("@use:a", "1").with_arg("b", "10").with_arg("@keep", "");
//! let reserved = take_reserved(&mut req, 64).unwrap().unwrap();
//! assert_eq!(reserved.dependencies(), [1]);
//! assert!(reserved.keep);
//! assert_eq!(req.args.len(), 1); // only `b` is left for the handler
//! ```

use crate::Request;
use bytes::Bytes;

/// What `@capabilities` answers: the extensions this implementation has.
pub const CAPABILITIES: &str = "after use keep cancel deadline";

/// The command that lists the extensions.
pub const CAPABILITIES_COMMAND: &[u8] = b"@capabilities";

/// The command that cancels a request of the same connection.
pub const CANCEL_COMMAND: &[u8] = b"@cancel";

/// The default most IDs one request may depend on.
pub const DEFAULT_MAX_DEPENDENCIES: usize = 64;

/// The default most bytes of `@keep` bodies kept per connection.
pub const DEFAULT_MAX_KEPT_BYTES: usize = 8 << 20;

/// The reserved arguments of one request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reserved {
    /// `@after`: IDs that must end first.
    pub after: Vec<u16>,
    /// `@keep`: keep the response body for later `@use`.
    pub keep: bool,
    /// `@use:NAME`: argument names and the IDs whose bodies they take.
    pub uses: Vec<(Bytes, u16)>,
    /// `@deadline`: milliseconds from the request's last frame.
    pub deadline_ms: Option<u64>,
}

impl Reserved {
    /// Every ID the request waits for, each once, in the order named.
    pub fn dependencies(&self) -> Vec<u16> {
        let mut ids: Vec<u16> = Vec::with_capacity(self.after.len() + self.uses.len());
        for id in self
            .after
            .iter()
            .copied()
            .chain(self.uses.iter().map(|(_, id)| *id))
        {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        ids
    }
}

/// Whether any of the request's arguments has a reserved name.
#[inline]
pub fn has_reserved(request: &Request) -> bool {
    request.args.iter().any(|(name, _)| name.starts_with(b"@"))
}

/// Takes the reserved arguments out of `request`. `Ok(None)` when it has
/// none (the request is untouched); `Err` with the request-level error
/// text of section 8 when one is unknown or malformed, or when the
/// request names more than `max_dependencies` IDs.
pub fn take_reserved(
    request: &mut Request,
    max_dependencies: usize,
) -> Result<Option<Reserved>, String> {
    if !has_reserved(request) {
        return Ok(None);
    }
    let mut reserved = Reserved::default();
    let mut error = None;
    request.args.retain(|(name, value)| {
        if !name.starts_with(b"@") {
            return true;
        }
        if error.is_none() {
            if let Err(message) = take_one(&mut reserved, name, value) {
                error = Some(message);
            }
        }
        false
    });
    if request.args.is_empty() {
        // Its allocation would otherwise stay with a held request.
        request.args = Vec::new();
    }
    if let Some(message) = error {
        return Err(message);
    }
    if reserved.dependencies().len() > max_dependencies {
        return Err("too many dependencies".to_string());
    }
    for (name, _) in &reserved.uses {
        if request.args.iter().any(|(n, _)| n == name) {
            return Err(format!("argument `{}` given twice", text(name)));
        }
    }
    Ok(Some(reserved))
}

fn take_one(reserved: &mut Reserved, name: &Bytes, value: &Bytes) -> Result<(), String> {
    match &name[..] {
        b"@after" => {
            let ids = value
                .split(|&b| b == b',')
                .map(parse_id)
                .collect::<Option<Vec<u16>>>()
                .ok_or_else(|| format!("malformed @after: {}", text(value)))?;
            reserved.after.extend(ids);
        }
        b"@keep" if value.is_empty() => reserved.keep = true,
        b"@keep" => return Err(format!("malformed @keep: {}", text(value))),
        b"@deadline" => {
            let ms = parse_decimal(value)
                .ok_or_else(|| format!("malformed @deadline: {}", text(value)))?;
            reserved.deadline_ms = Some(ms);
        }
        other if other.starts_with(b"@use:") && other.len() > 5 => {
            let id = parse_id(value)
                .ok_or_else(|| format!("malformed {}: {}", text(name), text(value)))?;
            reserved.uses.push((name.slice(5..), id));
        }
        _ => return Err(format!("unknown reserved argument: {}", text(name))),
    }
    Ok(())
}

/// A decimal request ID: digits only, at most 65535.
fn parse_id(digits: &[u8]) -> Option<u16> {
    parse_decimal(digits).and_then(|n| u16::try_from(n).ok())
}

/// Digits only (no sign, no spaces), fitting a u64.
fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn take(args: &[(&str, &str)]) -> Result<Option<Reserved>, String> {
        let mut req = Request::new("c");
        for (n, v) in args {
            req = req.with_arg(n.to_string(), v.to_string());
        }
        take_reserved(&mut req, 64)
    }

    #[test]
    fn a_request_without_reserved_arguments_is_untouched() {
        let mut req = Request::new("c").with_arg("a", "1");
        assert_eq!(take_reserved(&mut req, 64), Ok(None));
        assert_eq!(req.args.len(), 1);
    }

    #[test]
    fn every_reserved_argument_is_read_and_removed() {
        let mut req = Request::new("c")
            .with_arg("@after", "1,3,1")
            .with_arg("@deadline", "250")
            .with_arg("@keep", "")
            .with_arg("@use:x", "5")
            .with_arg("y", "plain");
        let r = take_reserved(&mut req, 64).unwrap().unwrap();
        assert_eq!(r.after, [1, 3, 1]);
        assert_eq!(r.deadline_ms, Some(250));
        assert!(r.keep);
        assert_eq!(r.uses, [(Bytes::from("x"), 5)]);
        assert_eq!(r.dependencies(), [1, 3, 5]);
        assert_eq!(req.args, [(Bytes::from("y"), Bytes::from("plain"))]);
    }

    #[test]
    fn malformed_values_give_the_texts_of_section_8() {
        assert_eq!(
            take(&[("@after", "1, 3")]),
            Err("malformed @after: 1, 3".into())
        );
        assert_eq!(take(&[("@after", "")]), Err("malformed @after: ".into()));
        assert_eq!(
            take(&[("@after", "70000")]),
            Err("malformed @after: 70000".into())
        );
        assert_eq!(
            take(&[("@after", "-1")]),
            Err("malformed @after: -1".into())
        );
        assert_eq!(
            take(&[("@deadline", "5s")]),
            Err("malformed @deadline: 5s".into())
        );
        assert_eq!(take(&[("@use:a", "x")]), Err("malformed @use:a: x".into()));
        assert_eq!(
            take(&[("@keep", "yes")]),
            Err("malformed @keep: yes".into())
        );
        assert_eq!(
            take(&[("@priority", "1")]),
            Err("unknown reserved argument: @priority".into())
        );
        assert_eq!(
            take(&[("@use:", "1")]),
            Err("unknown reserved argument: @use:".into())
        );
    }

    #[test]
    fn more_than_the_limit_of_dependencies_is_refused() {
        let ids: Vec<String> = (0..65).map(|i| (2 * i + 1).to_string()).collect();
        assert_eq!(
            take(&[("@after", &ids.join(","))]),
            Err("too many dependencies".into())
        );
        // Sixty-four distinct IDs, one named twice, are within it.
        let mut ids: Vec<String> = (0..64).map(|i| (2 * i + 1).to_string()).collect();
        ids.push("1".into());
        assert!(take(&[("@after", &ids.join(","))]).is_ok());
    }

    #[test]
    fn a_used_name_may_not_also_be_given_plainly() {
        assert_eq!(
            take(&[("@use:a", "1"), ("a", "2")]),
            Err("argument `a` given twice".into())
        );
    }
}
