//! What distinguishes the editions at run time. The binaries in
//! `editions/` pick one; handlers never test for an edition.

#[derive(Clone, Debug)]
pub struct Edition {
    /// `oss` or `cloud`.
    pub name: &'static str,
    /// The binary's name, for help and messages.
    pub binary: &'static str,
    /// The cloud edition is multi-tenant and has no embedded store.
    pub requires_postgres: bool,
    /// Cargo features compiled into this binary, for `config` output.
    pub features: &'static [&'static str],
}

impl Edition {
    pub const OSS: Edition = Edition {
        name: "oss",
        binary: "mobius-server",
        requires_postgres: false,
        features: &[],
    };
}
