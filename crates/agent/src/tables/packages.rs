//! `deb_packages` and `rpm_packages`.

use std::path::Path;
use std::time::Duration;

use super::agent::AgentInfo;
use super::read;
use super::schema::Record;

const DPKG_ADMINDIR: &str = "/var/lib/dpkg";
const RPM_DB: &str = "/var/lib/rpm";
/// `rpm -qa` on a large host takes a few seconds.
const RPM_LIMIT: Duration = Duration::from_secs(20);

pub fn deb_packages(_: &AgentInfo) -> Vec<Record> {
    read::text(format!("{DPKG_ADMINDIR}/status"))
        .map(|text| parse_dpkg_status(&text))
        .unwrap_or_default()
}

/// Paragraphs of `Field: value` lines; continuation lines (starting with
/// a space) belong to the field before and are not needed here.
fn parse_dpkg_status(text: &str) -> Vec<Record> {
    text.split("\n\n")
        .filter_map(|paragraph| {
            let field = |name: &str| {
                paragraph
                    .lines()
                    .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
                    .map(|v| v.trim().to_owned())
                    .unwrap_or_default()
            };
            let name = field("Package");
            if name.is_empty() {
                return None;
            }
            let version = field("Version");
            let revision = version
                .rsplit_once('-')
                .map(|(_, r)| r.to_owned())
                .unwrap_or_default();
            let source = field("Source");
            Some(vec![
                ("name", name.clone()),
                ("version", version),
                (
                    "source",
                    // osquery drops the version some Source fields carry.
                    source.split(' ').next().unwrap_or_default().to_owned(),
                ),
                ("size", field("Installed-Size")),
                ("arch", field("Architecture")),
                ("revision", revision),
                ("status", field("Status")),
                ("maintainer", field("Maintainer")),
                ("section", field("Section")),
                ("priority", field("Priority")),
                ("admindir", DPKG_ADMINDIR.to_owned()),
            ])
        })
        .collect()
}

pub fn rpm_packages(_: &AgentInfo) -> Vec<Record> {
    if !Path::new(RPM_DB).exists() {
        return Vec::new();
    }
    let format = "%{NAME}\\t%{VERSION}\\t%{RELEASE}\\t%{SOURCERPM}\\t%{SIZE}\\t%{SHA1HEADER}\\t%{ARCH}\\t%{EPOCH}\\t%{INSTALLTIME}\\t%{VENDOR}\\t%{GROUP}\\n";
    read::command("rpm", &["-qa", "--qf", format], RPM_LIMIT)
        .map(|text| parse_rpm_lines(&text))
        .unwrap_or_default()
}

fn parse_rpm_lines(text: &str) -> Vec<Record> {
    const COLUMNS: [&str; 11] = [
        "name",
        "version",
        "release",
        "source",
        "size",
        "sha1",
        "arch",
        "epoch",
        "install_time",
        "vendor",
        "package_group",
    ];
    text.lines()
        .filter(|line| !line.is_empty())
        .map(|line| {
            COLUMNS
                .iter()
                .zip(line.split('\t'))
                .map(|(column, value)| {
                    let value = if value == "(none)" { "" } else { value };
                    (*column, value.to_owned())
                })
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dpkg_paragraphs_become_packages() {
        let text = "Package: libc6\nStatus: install ok installed\nInstalled-Size: 12345\n\
                    Architecture: amd64\nSource: glibc (2.36-9)\nVersion: 2.36-9+deb12u4\n\
                    Description: GNU C Library\n more text\n\nPackage: tzdata\nVersion: 2024a\n";
        let rows = parse_dpkg_status(text);
        assert_eq!(rows.len(), 2);
        assert!(rows[0].contains(&("source", "glibc".into())));
        assert!(rows[0].contains(&("revision", "9+deb12u4".into())));
        assert!(rows[0].contains(&("size", "12345".into())));
        assert!(rows[1].contains(&("revision", String::new())));
    }

    #[test]
    fn rpm_lines_become_packages() {
        let rows = parse_rpm_lines(
            "bash\t5.1.8\t6.el9\tbash-5.1.8-6.el9.src.rpm\t7738634\tabc\tx86_64\t(none)\t1700000000\tRed Hat\tUnspecified\n",
        );
        assert_eq!(rows.len(), 1);
        assert!(rows[0].contains(&("epoch", String::new())));
        assert!(rows[0].contains(&("package_group", "Unspecified".into())));
    }
}
