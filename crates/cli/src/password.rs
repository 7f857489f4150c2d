//! Getting a password without putting it on the command line, where other
//! users could read it in the process list: from standard input, from
//! `MOBIUS_PASSWORD`, or typed at the terminal with echo turned off.

use std::io::{self, BufRead, IsTerminal, Write};
use std::process::{Command, ExitStatus};

use anyhow::{Context, Result};

use crate::credentials::Secret;
use crate::error::UsageError;

/// The one place the CLI reads the password variable; it cannot be a clap
/// option, because clap would also accept it as a visible `--password` flag.
const PASSWORD_VARIABLE: &str = "MOBIUS_PASSWORD";

/// Whether a typed password is asked for twice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Confirm {
    /// Choosing a new password: a typo would lock the owner out.
    Twice,
    Once,
}

/// Reads the password from the first source that applies: standard input
/// when `from_stdin`, else `MOBIUS_PASSWORD`, else the terminal.
pub async fn read_password(from_stdin: bool, confirm: Confirm) -> Result<Secret> {
    if from_stdin {
        return first_line(io::stdin().lock());
    }
    if let Some(password) = std::env::var_os(PASSWORD_VARIABLE) {
        let password = password
            .into_string()
            .map_err(|_| UsageError(format!("{PASSWORD_VARIABLE} is not valid UTF-8")))?;
        if password.is_empty() {
            return Err(UsageError(format!("{PASSWORD_VARIABLE} is empty")).into());
        }
        return Ok(Secret::from(password));
    }
    if !io::stdin().is_terminal() {
        return Err(UsageError(format!(
            "no password given; pass --password-stdin or set {PASSWORD_VARIABLE}"
        ))
        .into());
    }
    prompt_on_terminal(confirm).await
}

/// The first line of `input` without its line ending.
fn first_line(mut input: impl BufRead) -> Result<Secret> {
    let mut line = String::new();
    input
        .read_line(&mut line)
        .context("cannot read the password from standard input")?;
    let password = line
        .strip_suffix('\n')
        .map(|rest| rest.strip_suffix('\r').unwrap_or(rest))
        .unwrap_or(&line);
    if password.is_empty() {
        return Err(UsageError("no password on standard input".to_owned()).into());
    }
    Ok(Secret::from(password.to_owned()))
}

/// Asks on the terminal with echo off. Reading blocks, so it runs on the
/// blocking pool. Once tokio listens for Ctrl-C the default "exit at once"
/// is gone for the rest of the process, so a watcher task takes its place
/// for good: it turns echo back on (or the user's shell would stay silent)
/// and exits as an interrupted process does.
async fn prompt_on_terminal(confirm: Confirm) -> Result<Secret> {
    tokio::spawn(async {
        if tokio::signal::ctrl_c().await.is_ok() {
            // Best effort: we are exiting either way.
            let _ = set_echo(true);
            eprintln!();
            std::process::exit(130);
        }
    });
    tokio::task::spawn_blocking(move || {
        let password = prompt_once("Password: ")?;
        if confirm == Confirm::Twice
            && prompt_once("Repeat password: ")?.expose() != password.expose()
        {
            return Err(UsageError("the passwords do not match".to_owned()).into());
        }
        Ok(password)
    })
    .await
    .context("the password prompt failed")?
}

fn prompt_once(prompt: &str) -> Result<Secret> {
    eprint!("{prompt}");
    io::stderr().flush()?;
    let echo_off = EchoOff::new()?;
    let line = first_line(io::stdin().lock());
    drop(echo_off);
    eprintln!();
    line
}

/// Terminal echo turned off until dropped. Uses `stty` on the terminal that
/// is our standard input, which avoids a dependency for one ioctl.
struct EchoOff;

impl EchoOff {
    fn new() -> Result<Self> {
        match set_echo(false) {
            Ok(status) if status.success() => Ok(EchoOff),
            _ => Err(UsageError(format!(
                "cannot turn off terminal echo to ask for the password; pass --password-stdin or set {PASSWORD_VARIABLE}"
            ))
            .into()),
        }
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        // Nothing better to do if this fails; the user can run `stty echo`.
        let _ = set_echo(true);
    }
}

fn set_echo(on: bool) -> io::Result<ExitStatus> {
    Command::new("stty")
        .arg(if on { "echo" } else { "-echo" })
        .status()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(input: &str) -> Result<String> {
        first_line(input.as_bytes()).map(|secret| secret.expose().to_owned())
    }

    #[test]
    fn only_the_first_line_counts_without_its_ending() {
        assert_eq!(read("hunter2\n").expect("line"), "hunter2");
        assert_eq!(read("hunter2\r\nsecond line\n").expect("line"), "hunter2");
        assert_eq!(read("no newline").expect("line"), "no newline");
        assert_eq!(read("  spaces kept  \n").expect("line"), "  spaces kept  ");
    }

    #[test]
    fn an_empty_password_is_refused() {
        for input in ["", "\n", "\r\n"] {
            let err = read(input).expect_err("empty");
            assert!(err.downcast_ref::<UsageError>().is_some(), "{err}");
        }
    }
}
