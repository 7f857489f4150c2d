//! `mobius-server`, the OSS edition: embedded SQLite or Postgres, one binary.

fn main() -> std::process::ExitCode {
    mobius_server::cli::main(mobius_server::Edition::OSS)
}
