//! Server-side checks of each workload's parameters, run when a plan is
//! applied, so a bad parameter is refused (naming the field) before
//! anything is stored or sent to an agent.

use mobius_api::plans::{
    ExecParams, FileParams, MAX_TIMEOUT_SECS, SCRIPT_INTERPRETERS, SERVICE_ACTIONS, ScriptParams,
    ServiceParams,
};
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

/// The workloads an agent knows. `noop` does nothing and succeeds: the
/// load generator's simulated agents answer it.
pub const WORKLOAD_KINDS: &[&str] = &[
    "exec",
    "script",
    "file",
    "service",
    "install_software",
    "noop",
];

/// A refused parameter: the field path (`operations[0].params.argv`) and why.
pub type FieldError = (String, String);

/// Checks `params` for `kind`; `at` is the operation's path in the plan.
pub fn validate(kind: &str, params: &serde_json::Value, at: &str) -> Result<(), FieldError> {
    let field = |name: &str| format!("{at}.params.{name}");
    match kind {
        "exec" => {
            let p: ExecParams = parse(params, at)?;
            if p.argv.is_empty() || p.argv[0].is_empty() {
                return Err((field("argv"), "must name a program".into()));
            }
            check_env(&p.env, &field("env"))?;
            if let Some(cwd) = &p.cwd
                && !cwd.starts_with('/')
            {
                return Err((field("cwd"), "must be an absolute path".into()));
            }
            check_timeout(p.timeout_secs, &field("timeout_secs"))?;
            check_user(p.user.as_deref(), &field("user"))?;
            no_nul_anywhere(params, &format!("{at}.params"))
        }
        "script" => {
            let p: ScriptParams = parse(params, at)?;
            if !SCRIPT_INTERPRETERS.contains(&p.interpreter.as_str()) {
                return Err((
                    field("interpreter"),
                    format!("must be one of {}", SCRIPT_INTERPRETERS.join(", ")),
                ));
            }
            if p.body.trim().is_empty() {
                return Err((field("body"), "must not be empty".into()));
            }
            check_env(&p.env, &field("env"))?;
            check_timeout(p.timeout_secs, &field("timeout_secs"))?;
            check_user(p.user.as_deref(), &field("user"))?;
            no_nul_anywhere(params, &format!("{at}.params"))
        }
        "file" => {
            let p: FileParams = parse(params, at)?;
            if !p.path.starts_with('/') || p.path.ends_with('/') || p.path.contains("/../") {
                return Err((field("path"), "must be an absolute path to a file".into()));
            }
            if let Some(mode) = &p.mode
                && u32::from_str_radix(mode, 8).map_or(true, |m| m > 0o7777)
            {
                return Err((field("mode"), "must be octal, e.g. \"0644\"".into()));
            }
            if let Some(owner) = &p.owner {
                let (user, group) = owner.split_once(':').unwrap_or((owner, ""));
                if user.is_empty() || !is_name(user) || (!group.is_empty() && !is_name(group)) {
                    return Err((field("owner"), "must be user or user:group".into()));
                }
            }
            if let Some(expected) = &p.sha256 {
                let actual = hex::encode(Sha256::digest(p.content.as_bytes()));
                if !expected.eq_ignore_ascii_case(&actual) {
                    return Err((
                        field("sha256"),
                        "does not match the SHA-256 of content".into(),
                    ));
                }
            }
            no_nul_anywhere(params, &format!("{at}.params"))
        }
        "service" => {
            let p: ServiceParams = parse(params, at)?;
            if p.unit.is_empty()
                || p.unit.starts_with('-')
                || !p
                    .unit
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "@._-:\\".contains(c))
            {
                return Err((field("unit"), "must be a systemd unit name".into()));
            }
            if !SERVICE_ACTIONS.contains(&p.action.as_str()) {
                return Err((
                    field("action"),
                    format!("must be one of {}", SERVICE_ACTIONS.join(", ")),
                ));
            }
            Ok(())
        }
        "install_software" => {
            let p: mobius_api::software::InstallSoftwareParams = parse(params, at)?;
            if !["install", "uninstall"].contains(&p.action.as_str()) {
                return Err((field("action"), "must be install or uninstall".into()));
            }
            if !mobius_api::software::INSTALLER_KINDS.contains(&p.installer_kind.as_str()) {
                return Err((
                    field("installer_kind"),
                    format!(
                        "must be one of {}",
                        mobius_api::software::INSTALLER_KINDS.join(", ")
                    ),
                ));
            }
            if p.sha256.len() != 64 || !p.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err((field("sha256"), "must be 64 hex digits".into()));
            }
            if p.file_name.is_empty() || p.file_name.contains('/') || p.file_name.starts_with('.') {
                return Err((field("file_name"), "must be a plain file name".into()));
            }
            if p.installer_kind != "deb"
                && p.install_script
                    .as_deref()
                    .is_none_or(|s| s.trim().is_empty())
            {
                return Err((
                    field("install_script"),
                    format!("is required for {} installers", p.installer_kind),
                ));
            }
            check_timeout(p.timeout_secs, &field("timeout_secs"))?;
            no_nul_anywhere(params, &format!("{at}.params"))
        }
        "noop" => Ok(()),
        _ => Err((
            format!("{at}.kind"),
            format!("must be one of {}", WORKLOAD_KINDS.join(", ")),
        )),
    }
}

/// Parses `params`; serde names the missing or unknown field, which is
/// then reported under the operation's path.
fn parse<T: DeserializeOwned>(params: &serde_json::Value, at: &str) -> Result<T, FieldError> {
    serde_json::from_value(params.clone()).map_err(|e| {
        let text = e.to_string();
        let name = text
            .split('`')
            .nth(1)
            .filter(|_| text.starts_with("missing field") || text.starts_with("unknown field"));
        match name {
            Some(name) => (format!("{at}.params.{name}"), text),
            None => (format!("{at}.params"), text),
        }
    })
}

fn check_env(
    env: &std::collections::BTreeMap<String, String>,
    field: &str,
) -> Result<(), FieldError> {
    for name in env.keys() {
        if name.is_empty() || name.contains('=') {
            return Err((field.to_owned(), format!("invalid variable name {name:?}")));
        }
    }
    Ok(())
}

fn check_timeout(timeout: Option<u64>, field: &str) -> Result<(), FieldError> {
    match timeout {
        Some(0) => Err((field.to_owned(), "must be at least 1".into())),
        Some(t) if t > MAX_TIMEOUT_SECS => Err((
            field.to_owned(),
            format!("must be at most {MAX_TIMEOUT_SECS} (24 h)"),
        )),
        _ => Ok(()),
    }
}

fn check_user(user: Option<&str>, field: &str) -> Result<(), FieldError> {
    match user {
        Some(user) if !is_name(user) => Err((field.to_owned(), "must be a user name".into())),
        _ => Ok(()),
    }
}

fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

/// Postgres stores no NUL in text or jsonb: refuse it as the client's mistake.
fn no_nul_anywhere(value: &serde_json::Value, at: &str) -> Result<(), FieldError> {
    let bad = match value {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Array(items) => {
            return items.iter().try_for_each(|item| no_nul_anywhere(item, at));
        }
        serde_json::Value::Object(map) => {
            return map.iter().try_for_each(|(k, v)| {
                if k.contains('\0') {
                    return Err((at.to_owned(), "must not contain NUL characters".into()));
                }
                no_nul_anywhere(v, &format!("{at}.{k}"))
            });
        }
        _ => false,
    };
    if bad {
        return Err((at.to_owned(), "must not contain NUL characters".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn install_params(action: &str, kind: &str, script: Option<&str>) -> serde_json::Value {
        json!({
            "request_id": "01930000-0000-7000-8000-000000000000",
            "action": action,
            "name": "tool",
            "version": "1",
            "installer_kind": kind,
            "file_name": "tool.bin",
            "size_bytes": 1,
            "sha256": "0".repeat(64),
            "install_script": script,
        })
    }

    #[test]
    fn bad_parameters_name_their_field() {
        let cases = [
            ("exec", json!({"argv": []}), "op.params.argv"),
            ("exec", json!({}), "op.params.argv"),
            (
                "exec",
                json!({"argv": ["x"], "bogus": 1}),
                "op.params.bogus",
            ),
            (
                "exec",
                json!({"argv": ["x"], "timeout_secs": 90000}),
                "op.params.timeout_secs",
            ),
            (
                "script",
                json!({"interpreter": "perl", "body": "x"}),
                "op.params.interpreter",
            ),
            (
                "file",
                json!({"path": "rel", "content": ""}),
                "op.params.path",
            ),
            (
                "file",
                json!({"path": "/a", "content": "x", "sha256": "00"}),
                "op.params.sha256",
            ),
            (
                "file",
                json!({"path": "/a", "content": "x", "mode": "999"}),
                "op.params.mode",
            ),
            (
                "service",
                json!({"unit": "nginx", "action": "reload"}),
                "op.params.action",
            ),
            ("reboot", json!({}), "op.kind"),
            (
                "install_software",
                install_params("rm", "sh", Some("true")),
                "op.params.action",
            ),
            (
                "install_software",
                install_params("install", "exe", Some("true")),
                "op.params.installer_kind",
            ),
            (
                "install_software",
                install_params("install", "sh", None),
                "op.params.install_script",
            ),
        ];
        for (kind, params, field) in cases {
            let err = validate(kind, &params, "op").unwrap_err();
            assert_eq!(err.0, field, "{kind} {params}: {}", err.1);
        }
        validate("exec", &json!({"argv": ["true"]}), "op").unwrap();
        validate(
            "install_software",
            &install_params("install", "deb", None),
            "op",
        )
        .unwrap();
        validate(
            "service",
            &json!({"unit": "nginx.service", "action": "restart"}),
            "op",
        )
        .unwrap();
    }
}
