//! The URL space of PROTOCOL.md §7: which resource a request path names.

use wiremux_engine::Permission;

/// The root of the API, with its trailing slash.
pub const API_ROOT: &str = "/api/exp-http-v2-0001/";

/// The permission part of a command URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UrlPermission {
    /// `ro`: read-only commands only.
    Ro,
    /// `rw`: every command.
    Rw,
}

impl UrlPermission {
    /// The access this part of the URL grants.
    pub(crate) fn permission(self) -> Permission {
        match self {
            UrlPermission::Ro => Permission::Read,
            UrlPermission::Rw => Permission::Write,
        }
    }

    /// As written in the URL.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            UrlPermission::Ro => "ro",
            UrlPermission::Rw => "rw",
        }
    }
}

/// What a command URL asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target<'a> {
    /// Many commands in one body.
    Multirequest,
    /// The reflect report.
    Debugreflect,
    /// Exactly one command, of this name.
    Command(&'a str),
}

/// Where a path leads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route<'a> {
    /// The API root.
    Root,
    /// `<permission>/<command>`.
    Command {
        permission: UrlPermission,
        target: Target<'a>,
    },
    /// Nothing here; the text says why.
    NotFound(String),
}

/// Routes a request path (without the query).
pub(crate) fn route(path: &str) -> Route<'_> {
    let root = API_ROOT.trim_end_matches('/');
    let rest = match path.strip_prefix(root) {
        Some("") | Some("/") => return Route::Root,
        Some(rest) if rest.starts_with('/') => &rest[1..],
        _ => {
            return Route::NotFound(format!(
                "no such resource: {path}; the API is at {API_ROOT}"
            ))
        }
    };
    let parts: Vec<&str> = rest.split('/').collect();
    let [permission, command] = parts[..] else {
        return Route::NotFound(format!(
            "expected {API_ROOT}<ro|rw>/<command>; `{rest}` has {} part(s)",
            parts.len()
        ));
    };
    let permission = match permission {
        "ro" => UrlPermission::Ro,
        "rw" => UrlPermission::Rw,
        other => {
            return Route::NotFound(format!(
                "unknown permission `{other}`: expected `ro` or `rw`"
            ))
        }
    };
    let target = match command {
        "" => return Route::NotFound("no command after the permission".to_string()),
        "multirequest" => Target::Multirequest,
        "debugreflect" => Target::Debugreflect,
        name => Target::Command(name),
    };
    Route::Command { permission, target }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn not_found(path: &str) -> String {
        match route(path) {
            Route::NotFound(why) => why,
            other => panic!("{path}: {other:?}"),
        }
    }

    #[test]
    fn root_with_and_without_slash() {
        assert_eq!(route("/api/exp-http-v2-0001/"), Route::Root);
        assert_eq!(route("/api/exp-http-v2-0001"), Route::Root);
    }

    #[test]
    fn commands() {
        assert_eq!(
            route("/api/exp-http-v2-0001/ro/echo"),
            Route::Command {
                permission: UrlPermission::Ro,
                target: Target::Command("echo")
            }
        );
        assert_eq!(
            route("/api/exp-http-v2-0001/rw/multirequest"),
            Route::Command {
                permission: UrlPermission::Rw,
                target: Target::Multirequest
            }
        );
        assert_eq!(
            route("/api/exp-http-v2-0001/ro/debugreflect"),
            Route::Command {
                permission: UrlPermission::Ro,
                target: Target::Debugreflect
            }
        );
    }

    #[test]
    fn what_is_not_found() {
        assert_eq!(
            not_found("/api/exp-http-v2-0001/ro"),
            "expected /api/exp-http-v2-0001/<ro|rw>/<command>; `ro` has 1 part(s)"
        );
        assert_eq!(
            not_found("/api/exp-http-v2-0001/xx/echo"),
            "unknown permission `xx`: expected `ro` or `rw`"
        );
        assert_eq!(
            not_found("/api/exp-http-v2-0001/ro/"),
            "no command after the permission"
        );
        assert_eq!(
            not_found("/api/exp-http-v2-0001/ro/echo/x"),
            "expected /api/exp-http-v2-0001/<ro|rw>/<command>; `ro/echo/x` has 3 part(s)"
        );
        assert_eq!(
            not_found("/api/exp-http-v2-00012/ro/echo"),
            "no such resource: /api/exp-http-v2-00012/ro/echo; the API is at /api/exp-http-v2-0001/"
        );
        assert_eq!(
            not_found("/"),
            "no such resource: /; the API is at /api/exp-http-v2-0001/"
        );
    }
}
