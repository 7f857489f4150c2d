//! Software distribution end to end: uploads streamed into local and
//! S3-compatible storage (a real moto_server), checksum and size refusals,
//! installs that a real agent performs (a script package and a .deb into
//! a throwaway dpkg root), a download cut halfway that resumes, a
//! corrupted installer refused before anything runs, an agent killed
//! mid-install (INTERRUPTED, then a retry that succeeds), and tenant
//! separation.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use mobius_core::audit::Actor;
use mobius_core::db::SystemTask;
use mobius_tests::fleet::{Agent, Fleet};
use mobius_tests::{eventually, uuid_of};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SOFTWARE: &str = "/api/v1/mobius/software";

/// Deterministic, incompressible-looking bytes.
fn installer_bytes(len: usize, seed: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut block = Sha256::digest([seed]).to_vec();
    while out.len() < len {
        block = Sha256::digest(&block).to_vec();
        out.extend_from_slice(&block);
    }
    out.truncate(len);
    out
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A multipart body: `metadata` then `installer`.
fn multipart(metadata: &Value, file_name: &str, bytes: &[u8]) -> (String, Vec<u8>) {
    let boundary = "mobius-test-boundary-7d1f";
    let mut body = Vec::new();
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"metadata\"\r\nContent-Type: application/json\r\n\r\n{metadata}\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"installer\"; filename=\"{file_name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(bytes);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// REST calls on a fleet.
pub(crate) trait Software {
    async fn upload(&self, metadata: Value, file_name: &str, bytes: &[u8]) -> (u16, Value);
    async fn rest(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value);
    async fn install(&self, version: &str, device: &str) -> Value;
    async fn wait_install(
        &self,
        version: &str,
        request: &str,
        status: &str,
        timeout: Duration,
    ) -> Value;
}

impl Software for Fleet {
    async fn upload(&self, metadata: Value, file_name: &str, bytes: &[u8]) -> (u16, Value) {
        let (content_type, body) = multipart(&metadata, file_name, bytes);
        let response = self
            .http
            .post(self.server.url(SOFTWARE))
            .bearer_auth(&self.token)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn rest(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self
            .http
            .request(method, self.server.url(path))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn install(&self, version: &str, device: &str) -> Value {
        let (status, body) = self
            .rest(
                reqwest::Method::POST,
                &format!("{SOFTWARE}/{version}/install"),
                Some(json!({ "device_ids": [device] })),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body
    }

    /// Waits until the request's install reaches `status`; answers it.
    async fn wait_install(
        &self,
        version: &str,
        request: &str,
        status: &str,
        timeout: Duration,
    ) -> Value {
        let find = async || {
            let (_, shown) = self
                .rest(reqwest::Method::GET, &format!("{SOFTWARE}/{version}"), None)
                .await;
            shown["installs"]
                .as_array()
                .and_then(|all| all.iter().find(|i| i["request_id"] == request).cloned())
                .unwrap_or(Value::Null)
        };
        let reached = eventually(timeout, async || find().await["status"] == status).await;
        let install = find().await;
        assert!(reached, "the install never became {status}: {install}");
        install
    }
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                found.extend(files_under(&path));
            } else {
                found.push(path);
            }
        }
    }
    found
}

/// A small `.deb` (mobius-hello 1.0, one file under /opt) built with
/// `dpkg-deb`, and a dpkg command line that installs into a throwaway
/// root under `work` rather than the host's.
pub(crate) struct ThrowawayDeb {
    pub root: PathBuf,
    pub bytes: Vec<u8>,
    /// `dpkg --root=… …`: append `-i FILE` or `-r mobius-hello`.
    pub dpkg: String,
}

impl ThrowawayDeb {
    pub(crate) fn build(work: &Path) -> ThrowawayDeb {
        let root = work.join("dpkg-root");
        let package = work.join("pkg");
        std::fs::create_dir_all(root.join("var/lib/dpkg/info")).unwrap();
        std::fs::create_dir_all(root.join("var/lib/dpkg/updates")).unwrap();
        std::fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
        std::fs::create_dir_all(package.join("DEBIAN")).unwrap();
        std::fs::create_dir_all(package.join("opt/mobius-hello")).unwrap();
        std::fs::write(
            package.join("DEBIAN/control"),
            "Package: mobius-hello\nVersion: 1.0\nArchitecture: all\nMaintainer: Mobius <dev@mobius.test>\nDescription: test package\n",
        )
        .unwrap();
        std::fs::write(package.join("opt/mobius-hello/hello.txt"), "hello\n").unwrap();
        let deb = work.join("mobius-hello.deb");
        let built = Command::new("dpkg-deb")
            .args(["--build", "--root-owner-group"])
            .arg(&package)
            .arg(&deb)
            .output()
            .unwrap();
        assert!(
            built.status.success(),
            "{}",
            String::from_utf8_lossy(&built.stderr)
        );
        let dpkg = format!(
            "dpkg --root='{}' --force-script-chrootless --force-not-root",
            root.display()
        );
        ThrowawayDeb {
            bytes: std::fs::read(&deb).unwrap(),
            root,
            dpkg,
        }
    }
}

/// `mobius --output json ARGS` as the fleet's owner, with its own config
/// directory; answers success, stdout and stderr.
pub(crate) fn mobius_cli(
    fleet: &Fleet,
    config_dir: &Path,
    args: &[&str],
) -> (bool, String, String) {
    let out = Command::new(mobius_tests::workspace_binary("mobius"))
        .args([
            "--server",
            &fleet.server.url(""),
            "--token",
            &fleet.token,
            "--output",
            "json",
        ])
        .args(args)
        .env("MOBIUS_CONFIG_DIR", config_dir)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub(crate) fn script_metadata(name: &str, version: &str, sha: Option<&str>, script: &str) -> Value {
    json!({
        "name": name,
        "version": version,
        "installer_kind": "sh",
        "sha256": sha,
        "install_script": script,
    })
}

#[tokio::test]
async fn uploads_are_streamed_hashed_limited_and_kept_per_tenant() {
    let installers = tempfile::tempdir().unwrap();
    let dir = installers.path().display().to_string();
    let fleet = Fleet::start(&[
        ("MOBIUS_SOFTWARE_LOCAL_DIR", dir.as_str()),
        ("MOBIUS_SOFTWARE_MAX_INSTALLER_BYTES", "3000000"),
    ])
    .await;

    // A good upload: stored whole, hashed, listed.
    let bytes = installer_bytes(1_500_000, 1);
    let sha = sha256_hex(&bytes);
    let (status, created) = fleet
        .upload(
            script_metadata("Tool", "1.0", Some(&sha), "sh \"$INSTALLER_PATH\""),
            "tool.sh",
            &bytes,
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["sha256"], sha.as_str());
    assert_eq!(created["size_bytes"], 1_500_000);
    assert_eq!(created["file_name"], "tool.sh");
    let stored = files_under(installers.path());
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(std::fs::read(&stored[0]).unwrap(), bytes);
    let version = created["id"].as_str().unwrap().to_owned();

    // Without a checksum, the server computes it on the way.
    let other = installer_bytes(10_000, 2);
    let (status, unchecked) = fleet
        .upload(
            script_metadata("Tool", "1.1", None, "true"),
            "tool.sh",
            &other,
        )
        .await;
    assert_eq!(status, 201, "{unchecked}");
    assert_eq!(unchecked["sha256"], sha256_hex(&other).as_str());

    // A checksum mismatch is refused and nothing is kept.
    let (status, refused) = fleet
        .upload(
            script_metadata("Tool", "2.0", Some(&"ab".repeat(32)), "true"),
            "tool.sh",
            &bytes,
        )
        .await;
    assert_eq!(status, 400, "{refused}");
    assert_eq!(refused["error"]["code"], "BAD_USER_INPUT");
    assert_eq!(refused["error"]["field"], "sha256");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("checksum mismatch"),
        "{refused}"
    );
    assert_eq!(files_under(installers.path()).len(), 2);

    // Over the size limit: refused, nothing kept.
    let big = installer_bytes(3_500_000, 3);
    let (status, refused) = fleet
        .upload(script_metadata("Big", "1.0", None, "true"), "big.sh", &big)
        .await;
    assert_eq!(status, 400, "{refused}");
    assert_eq!(refused["error"]["code"], "BAD_USER_INPUT");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("larger than the limit of 3000000 bytes"),
        "{refused}"
    );
    assert_eq!(files_under(installers.path()).len(), 2);

    // The same version twice: CONFLICT. Bad metadata names its field.
    let (status, refused) = fleet
        .upload(
            script_metadata("Tool", "1.0", None, "true"),
            "tool.sh",
            &other,
        )
        .await;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(refused["error"]["code"], "CONFLICT");
    let (status, refused) = fleet
        .upload(
            json!({ "name": "X", "version": "1", "installer_kind": "exe" }),
            "x.exe",
            &other,
        )
        .await;
    assert_eq!(status, 400, "{refused}");
    assert_eq!(refused["error"]["field"], "installerKind");
    let (status, refused) = fleet
        .upload(
            json!({ "name": "X", "version": "1", "installer_kind": "sh" }),
            "x.sh",
            &other,
        )
        .await;
    assert_eq!(status, 400, "{refused}");
    assert_eq!(refused["error"]["field"], "installScript");
    assert_eq!(files_under(installers.path()).len(), 2);

    // No credential: UNAUTHENTICATED.
    let anonymous = fleet
        .http
        .get(fleet.server.url(SOFTWARE))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);

    let (status, listed) = fleet.rest(reqwest::Method::GET, SOFTWARE, None).await;
    assert_eq!(status, 200);
    assert_eq!(listed["versions"].as_array().unwrap().len(), 2, "{listed}");

    // Another tenant's catalog and devices are invisible.
    let store = fleet.db.app_store().await;
    let bravo = store
        .create_tenant(&Actor::system(), "Bravo", "bravo")
        .await
        .unwrap();
    let scope = store
        .begin(&SystemTask::new("test", bravo.id))
        .await
        .unwrap();
    let bravo_site = scope
        .sites()
        .create(&Actor::system(), "bravo-site")
        .await
        .unwrap();
    let bravo_device = scope
        .devices()
        .register(&Actor::system(), bravo_site.id, "bravo-host", "bravo-fp")
        .await
        .unwrap();
    let (_, bravo_version) = scope
        .software()
        .add_version(
            &Actor::system(),
            mobius_core::software::NewVersion {
                name: "Secret".into(),
                version: "1".into(),
                platform: "linux".into(),
                installer_kind: "sh".into(),
                file_name: "s.sh".into(),
                storage_key: format!("{}/secret", bravo.id.simple()),
                size_bytes: 1,
                sha256: "0".repeat(64),
                install_script: Some("true".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    scope.commit().await.unwrap();
    let (_, listed) = fleet.rest(reqwest::Method::GET, SOFTWARE, None).await;
    assert!(!listed.to_string().contains("Secret"), "{listed}");
    for (method, path) in [
        (
            reqwest::Method::GET,
            format!("{SOFTWARE}/{}", bravo_version.id),
        ),
        (
            reqwest::Method::DELETE,
            format!("{SOFTWARE}/{}", bravo_version.id),
        ),
    ] {
        let (status, body) = fleet.rest(method, &path, None).await;
        assert_eq!(status, 404, "{body}");
        assert_eq!(body["error"]["code"], "NOT_FOUND");
    }
    let (status, body) = fleet
        .rest(
            reqwest::Method::POST,
            &format!("{SOFTWARE}/{}/install", bravo_version.id),
            Some(json!({ "site_ids": [bravo_site.id] })),
        )
        .await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = fleet
        .rest(
            reqwest::Method::POST,
            &format!("{SOFTWARE}/{version}/install"),
            Some(json!({ "device_ids": [bravo_device.id] })),
        )
        .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "NOT_FOUND");

    // Delete: gone from the catalog and from storage.
    let (status, _) = fleet
        .rest(
            reqwest::Method::DELETE,
            &format!("{SOFTWARE}/{version}"),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = fleet
        .rest(reqwest::Method::GET, &format!("{SOFTWARE}/{version}"), None)
        .await;
    assert_eq!(status, 404);
    assert_eq!(files_under(installers.path()).len(), 1);

    // The CLI: upload (streamed, with its SHA-256), list and install, as JSON.
    let cli_file = installers.path().join("../cli-tool.sh");
    std::fs::write(&cli_file, installer_bytes(70_000, 6)).unwrap();
    let cli_config = installers.path().join("../cli-config");
    let mobius = |args: &[&str]| mobius_cli(&fleet, &cli_config, args);
    let (ok, out, err) = mobius(&[
        "software",
        "upload",
        cli_file.to_str().unwrap(),
        "--name",
        "Cli",
        "--version",
        "3.1",
        "--kind",
        "sh",
        "--install-script",
        "true",
        "--self-service",
    ]);
    assert!(ok, "{err}");
    let uploaded: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        uploaded["sha256"],
        sha256_hex(&installer_bytes(70_000, 6)).as_str(),
        "{out}"
    );
    assert_eq!(uploaded["self_service"], true);
    let (ok, out, err) = mobius(&["software", "list"]);
    assert!(ok, "{err}");
    let listed: Value = serde_json::from_str(&out).unwrap();
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["name"] == "Cli"),
        "{out}"
    );
    let (ok, _, err) = mobius(&["software", "install", uploaded["id"].as_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("--device"), "{err}");
    let (ok, _, err) = mobius(&[
        "software",
        "upload",
        cli_file.to_str().unwrap(),
        "--name",
        "Cli",
        "--version",
        "3.1",
        "--kind",
        "sh",
        "--install-script",
        "true",
    ]);
    assert!(!ok);
    assert!(err.contains("CONFLICT"), "{err}");

    // Every change is audited.
    let audit = fleet
        .gql(
            "{ auditEvents(first: 100) { nodes { action } } }",
            json!({}),
        )
        .await;
    let actions = audit.to_string();
    assert!(actions.contains("software.version_uploaded"), "{audit}");
    assert!(actions.contains("software.version_deleted"), "{audit}");
}

/// A TCP relay in front of the device listener that, once armed, cuts the
/// first connection that has carried `cut_after` bytes to the agent.
struct CuttingProxy {
    addr: SocketAddr,
    armed: Arc<AtomicBool>,
    cuts: Arc<AtomicU64>,
}

impl CuttingProxy {
    async fn start(upstream: SocketAddr, cut_after: u64) -> CuttingProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let armed = Arc::new(AtomicBool::new(false));
        let cuts = Arc::new(AtomicU64::new(0));
        let (armed_in, cuts_in) = (armed.clone(), cuts.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (armed, cuts) = (armed_in.clone(), cuts_in.clone());
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (mut client_read, mut client_write) = client.into_split();
                    let (mut server_read, mut server_write) = server.into_split();
                    let up = tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
                    });
                    let mut sent = 0u64;
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        let n = match server_read.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if client_write.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        sent += n as u64;
                        if sent > cut_after && armed.swap(false, Ordering::SeqCst) {
                            cuts.fetch_add(1, Ordering::SeqCst);
                            break;
                        }
                    }
                    up.abort();
                });
            }
        });
        CuttingProxy { addr, armed, cuts }
    }
}

/// Points an enrolled agent at another address for the device listener.
fn redirect_agent(dir: &Path, to: SocketAddr) {
    let path = dir.join("state.json");
    let mut state: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    state["server_url"] = json!(format!("https://{to}"));
    std::fs::write(&path, serde_json::to_vec(&state).unwrap()).unwrap();
}

#[tokio::test]
async fn packages_install_a_cut_download_resumes_and_a_corrupt_one_is_refused() {
    let installers = tempfile::tempdir().unwrap();
    let dir = installers.path().display().to_string();
    let fleet = Fleet::start(&[("MOBIUS_SOFTWARE_LOCAL_DIR", dir.as_str())]).await;
    let device = fleet.enroll().await;
    let proxy = CuttingProxy::start(fleet.server.device_addr, 600_000).await;
    redirect_agent(&fleet.agent_dir(), proxy.addr);
    let agent = Agent::start(&fleet.agent_dir());
    agent.connected().await;
    let work = tempfile::tempdir().unwrap();

    // A script package of 2 MB whose download is cut after ~600 kB.
    let marker = work.path().join("tool-installed");
    let bytes = installer_bytes(2_000_000, 9);
    let script = format!(
        "test \"$(wc -c < \"$INSTALLER_PATH\")\" -eq 2000000 && echo \"installed $SOFTWARE_NAME $SOFTWARE_VERSION\" && echo ok > '{}'",
        marker.display()
    );
    let (status, created) = fleet
        .upload(
            script_metadata("Tool", "1.0", Some(&sha256_hex(&bytes)), &script),
            "tool.bin",
            &bytes,
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let version = created["id"].as_str().unwrap().to_owned();
    proxy.armed.store(true, Ordering::SeqCst);
    let requested = fleet.install(&version, &device).await;
    assert_eq!(requested["installs"][0]["status"], "PENDING", "{requested}");
    assert_eq!(
        requested["installs"][0]["device_id"],
        uuid_of(&device).to_string()
    );
    let request = requested["request_id"].as_str().unwrap().to_owned();
    let install = fleet
        .wait_install(&version, &request, "INSTALLED", Duration::from_secs(60))
        .await;
    assert_eq!(
        proxy.cuts.load(Ordering::SeqCst),
        1,
        "the download was never cut"
    );
    assert_eq!(install["bytes_downloaded"], 2_000_000, "{install}");
    assert_eq!(install["exit_code"], 0, "{install}");
    assert!(
        install["output_tail"]
            .as_str()
            .unwrap()
            .contains("installed Tool 1.0"),
        "{install}"
    );
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "ok\n");
    let resumed = agent
        .log
        .lock()
        .unwrap()
        .iter()
        .find(|l| l.contains("resuming download from byte"))
        .cloned()
        .unwrap_or_else(|| panic!("the agent never resumed: {:?}", agent.log.lock().unwrap()));
    let from: Value = serde_json::from_str(&resumed).unwrap();
    let from_byte = from["fields"]["from_byte"]
        .as_u64()
        .or_else(|| from["from_byte"].as_u64())
        .unwrap_or(0);
    assert!(
        from_byte > 0 && from_byte < 2_000_000,
        "resumed from {from_byte}: {resumed}"
    );

    // A corrupted installer: refused before anything runs.
    let bad_marker = work.path().join("corrupt-ran");
    let bytes = installer_bytes(300_000, 10);
    let (status, created) = fleet
        .upload(
            script_metadata(
                "Corrupt",
                "1.0",
                None,
                &format!("touch '{}'", bad_marker.display()),
            ),
            "corrupt.bin",
            &bytes,
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let corrupt = created["id"].as_str().unwrap().to_owned();
    let stored = files_under(installers.path())
        .into_iter()
        .find(|p| std::fs::metadata(p).unwrap().len() == 300_000)
        .unwrap();
    let mut tampered = std::fs::read(&stored).unwrap();
    tampered[1000] ^= 0xff;
    std::fs::write(&stored, tampered).unwrap();
    let requested = fleet.install(&corrupt, &device).await;
    let request = requested["request_id"].as_str().unwrap().to_owned();
    let install = fleet
        .wait_install(&corrupt, &request, "FAILED", Duration::from_secs(30))
        .await;
    assert!(
        install["reason"]
            .as_str()
            .unwrap()
            .starts_with("checksum mismatch"),
        "{install}"
    );
    assert!(!bad_marker.exists(), "the corrupted installer's script ran");

    // A pre-install condition over the host tables: one that answers no
    // row stops the install before anything runs; one that answers a row
    // lets it go ahead; a broken one fails closed.
    let condition_marker = work.path().join("conditional-ran");
    let conditional = |name: &'static str, sql: &'static str| {
        let script = format!("touch '{}-{name}'", condition_marker.display());
        let fleet = &fleet;
        async move {
            let (status, created) = fleet
                .upload(
                    json!({ "name": name, "version": "1", "installer_kind": "sh", "install_script": script,
                            "pre_install_condition": sql }),
                    "c.sh",
                    b"echo",
                )
                .await;
            assert_eq!(status, 201, "{created}");
            created["id"].as_str().unwrap().to_owned()
        }
    };
    let unmet = conditional(
        "Unmet",
        "SELECT 1 FROM os_version WHERE name = 'no such os'",
    )
    .await;
    let met = conditional("Met", "SELECT 1 FROM os_version").await;
    let broken = conditional("Broken", "SELECT 1 FROM no_such_table").await;
    for (version, status, reason) in [
        (&unmet, "FAILED", Some("condition not met")),
        (&met, "INSTALLED", None),
        (&broken, "FAILED", Some("condition not checked")),
    ] {
        let requested = fleet.install(version, &device).await;
        let install = fleet
            .wait_install(
                version,
                requested["request_id"].as_str().unwrap(),
                status,
                Duration::from_secs(30),
            )
            .await;
        if let Some(reason) = reason {
            assert!(
                install["reason"].as_str().unwrap().starts_with(reason),
                "{install}"
            );
        }
    }
    assert!(!Path::new(&format!("{}-Unmet", condition_marker.display())).exists());
    assert!(Path::new(&format!("{}-Met", condition_marker.display())).exists());

    // A .deb, installed into a throwaway dpkg root, then uninstalled.
    let ThrowawayDeb {
        root,
        bytes: deb_bytes,
        dpkg,
    } = ThrowawayDeb::build(work.path());
    let (status, created) = fleet
        .upload(
            json!({
                "name": "mobius-hello", "version": "1.0", "installer_kind": "deb",
                "sha256": sha256_hex(&deb_bytes),
                "install_script": format!("{dpkg} -i \"$INSTALLER_PATH\""),
                "uninstall_script": format!("{dpkg} -r mobius-hello"),
            }),
            "mobius-hello_1.0_all.deb",
            &deb_bytes,
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let deb_version = created["id"].as_str().unwrap().to_owned();
    let requested = fleet.install(&deb_version, &device).await;
    let install = fleet
        .wait_install(
            &deb_version,
            requested["request_id"].as_str().unwrap(),
            "INSTALLED",
            Duration::from_secs(30),
        )
        .await;
    assert!(
        install["output_tail"]
            .as_str()
            .unwrap()
            .contains("Setting up mobius-hello"),
        "{install}"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("opt/mobius-hello/hello.txt")).unwrap(),
        "hello\n"
    );
    let (status, requested) = fleet
        .rest(
            reqwest::Method::POST,
            &format!("{SOFTWARE}/{deb_version}/uninstall"),
            Some(json!({ "device_ids": [device] })),
        )
        .await;
    assert_eq!(status, 201, "{requested}");
    fleet
        .wait_install(
            &deb_version,
            requested["request_id"].as_str().unwrap(),
            "UNINSTALLED",
            Duration::from_secs(30),
        )
        .await;
    assert!(!root.join("opt/mobius-hello/hello.txt").exists());
    agent.kill();
}

#[tokio::test]
async fn an_agent_killed_mid_install_ends_interrupted_and_a_retry_succeeds() {
    let fleet = Fleet::start(&[]).await;
    let device = fleet.enroll().await;
    let agent = Agent::start(&fleet.agent_dir());
    agent.connected().await;
    let work = tempfile::tempdir().unwrap();
    let started = work.path().join("started");
    let done = work.path().join("done");
    // The first run hangs (the agent is killed then); the retry finishes.
    let script = format!(
        "if [ -f '{s}' ]; then echo finished > '{d}'; else touch '{s}'; sleep 120; fi",
        s = started.display(),
        d = done.display()
    );
    let bytes = installer_bytes(50_000, 4);
    let (status, created) = fleet
        .upload(
            script_metadata("Slow", "1.0", None, &script),
            "slow.sh",
            &bytes,
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let version = created["id"].as_str().unwrap().to_owned();
    let requested = fleet.install(&version, &device).await;
    let request = requested["request_id"].as_str().unwrap().to_owned();
    let execution = requested["installs"][0]["execution_id"]
        .as_str()
        .unwrap()
        .to_owned();
    fleet
        .wait_install(&version, &request, "INSTALLING", Duration::from_secs(30))
        .await;
    assert!(eventually(Duration::from_secs(10), async || started.exists()).await);
    agent.kill();

    let agent = Agent::start(&fleet.agent_dir());
    agent.connected().await;
    let install = fleet
        .wait_install(&version, &request, "FAILED", Duration::from_secs(30))
        .await;
    assert!(
        install["reason"]
            .as_str()
            .unwrap()
            .starts_with("interrupted"),
        "{install}"
    );
    let shown = fleet
        .gql(
            "query($id: ID!) { planExecution(id: $id) { status } }",
            json!({ "id": mobius_tests::global_id("PlanExecution", execution.parse().unwrap()) }),
        )
        .await;
    assert_eq!(
        shown["data"]["planExecution"]["status"], "INTERRUPTED",
        "{shown}"
    );

    // "Retry failed" requests the failed install again, and it succeeds.
    let (status, retry) = fleet
        .rest(
            reqwest::Method::POST,
            &format!("{SOFTWARE}/devices/{device}/retry-failed"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{retry}");
    assert_eq!(retry["installs"].as_array().unwrap().len(), 1, "{retry}");
    let install = fleet
        .wait_install(
            &version,
            retry["installs"][0]["request_id"].as_str().unwrap(),
            "INSTALLED",
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(install["exit_code"], 0);
    assert_eq!(std::fs::read_to_string(&done).unwrap(), "finished\n");

    // Nothing failed any more: a second retry requests nothing.
    let (_, retry) = fleet
        .rest(
            reqwest::Method::POST,
            &format!("{SOFTWARE}/devices/{device}/retry-failed"),
            None,
        )
        .await;
    assert_eq!(retry["installs"], json!([]), "{retry}");

    // "Install all self-service": the newest self-service version not on
    // the device yet; titles without the flag are left alone.
    let portal = work.path().join("portal-installed");
    for (name, version, self_service) in [
        ("Portal", "1.0", true),
        ("Portal", "2.0", true),
        ("Admin only", "1.0", false),
    ] {
        let (status, created) = fleet
            .upload(
                json!({ "name": name, "version": version, "installer_kind": "sh", "self_service": self_service,
                        "install_script": format!("echo $SOFTWARE_VERSION >> '{}'", portal.display()) }),
                "p.sh",
                b"echo",
            )
            .await;
        assert_eq!(status, 201, "{created}");
    }
    let (status, requested) = fleet
        .rest(
            reqwest::Method::POST,
            &format!("{SOFTWARE}/devices/{device}/install-self-service"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{requested}");
    assert_eq!(
        requested["installs"].as_array().unwrap().len(),
        1,
        "{requested}"
    );
    let portal_version = requested["installs"][0]["version_id"]
        .as_str()
        .unwrap()
        .to_owned();
    fleet
        .wait_install(
            &portal_version,
            requested["installs"][0]["request_id"].as_str().unwrap(),
            "INSTALLED",
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(std::fs::read_to_string(&portal).unwrap(), "2.0\n");
    let (_, again) = fleet
        .rest(
            reqwest::Method::POST,
            &format!("{SOFTWARE}/devices/{device}/install-self-service"),
            None,
        )
        .await;
    assert_eq!(again["installs"], json!([]), "{again}");

    // The agent reports the host's packages: dpkg itself, at the version
    // dpkg-query names.
    let dpkg = Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", "dpkg"])
        .output()
        .unwrap();
    let dpkg_version = String::from_utf8_lossy(&dpkg.stdout).into_owned();
    assert!(!dpkg_version.is_empty());
    let find = async || {
        fleet
            .rest(
                reqwest::Method::GET,
                &format!("{SOFTWARE}/inventory?name=dpkg"),
                None,
            )
            .await
            .1
    };
    let reported = eventually(Duration::from_secs(20), async || {
        find().await["packages"]
            .as_array()
            .is_some_and(|p| !p.is_empty())
    })
    .await;
    let inventory = find().await;
    assert!(reported, "no inventory: {inventory}");
    assert_eq!(
        inventory["packages"][0]["device_id"],
        uuid_of(&device).to_string(),
        "{inventory}"
    );
    assert_eq!(
        inventory["packages"][0]["version"],
        dpkg_version.as_str(),
        "{inventory}"
    );
    assert_eq!(inventory["packages"][0]["source"], "deb");
    let shown = fleet
        .gql(
            "{ softwareInventory(name: \"dpkg\") { deviceId source version } }",
            json!({}),
        )
        .await;
    assert_eq!(
        shown["data"]["softwareInventory"][0]["deviceId"],
        device.as_str(),
        "{shown}"
    );
    assert_eq!(
        shown["data"]["softwareInventory"][0]["version"],
        dpkg_version.as_str(),
        "{shown}"
    );
    // And in the CLI.
    let config = tempfile::tempdir().unwrap();
    let (ok, out, err) = mobius_cli(
        &fleet,
        config.path(),
        &["software", "inventory", "--name", "dpkg"],
    );
    assert!(ok, "{err}");
    let rows: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(rows[0]["device_id"], uuid_of(&device).to_string(), "{out}");
    assert_eq!(rows[0]["version"], dpkg_version.as_str(), "{out}");
    let (ok, out, _) = mobius_cli(
        &fleet,
        config.path(),
        &["software", "inventory", "--name", "no-such-package"],
    );
    assert!(ok);
    assert_eq!(out.trim(), "[]");
    agent.kill();
}

const PEERS_VENV: &str = "/var/cache/mobius/peers-venv";

/// A moto_server (the S3 emulator) on a free port, killed on drop.
struct Moto {
    child: Child,
    addr: SocketAddr,
}

impl Moto {
    async fn start() -> Moto {
        let program = Path::new(PEERS_VENV).join("bin/moto_server");
        assert!(
            program.is_file(),
            "{} is missing: run .ci/run (it installs tests/peers/requirements.txt into {PEERS_VENV})",
            program.display()
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(&program)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let moto = Moto {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        let up = eventually(Duration::from_secs(20), async || {
            tokio::net::TcpStream::connect(moto.addr).await.is_ok()
        })
        .await;
        assert!(up, "moto_server did not listen on {}", moto.addr);
        moto
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn installers_in_an_s3_bucket_upload_in_parts_and_install() {
    let moto = Moto::start().await;
    let endpoint = format!("http://{}", moto.addr);
    // moto does not check signatures: create the bucket directly.
    let made = reqwest::Client::new()
        .put(format!("{endpoint}/installers"))
        .send()
        .await
        .unwrap();
    assert!(made.status().is_success(), "{:?}", made.text().await);
    let fleet = Fleet::start(&[
        ("MOBIUS_SOFTWARE_STORAGE", "s3"),
        ("MOBIUS_SOFTWARE_S3_BUCKET", "installers"),
        ("MOBIUS_SOFTWARE_S3_ENDPOINT", endpoint.as_str()),
        ("MOBIUS_SOFTWARE_S3_PATH_STYLE", "true"),
        ("MOBIUS_SOFTWARE_S3_ACCESS_KEY_ID", "test"),
        ("MOBIUS_SOFTWARE_S3_SECRET_ACCESS_KEY", "test"),
        ("MOBIUS_SOFTWARE_MAX_INSTALLER_BYTES", "20000000"),
    ])
    .await;
    let device = fleet.enroll().await;
    let agent = Agent::start(&fleet.agent_dir());
    agent.connected().await;

    // 17 MB: three parts of a multipart upload.
    let bytes = installer_bytes(17_000_000, 5);
    let work = tempfile::tempdir().unwrap();
    let marker = work.path().join("s3-installed");
    let script = format!(
        "test \"$(sha256sum < \"$INSTALLER_PATH\" | cut -d' ' -f1)\" = '{}' && echo ok > '{}'",
        sha256_hex(&bytes),
        marker.display()
    );
    let (status, created) = fleet
        .upload(
            script_metadata("Large", "1.0", Some(&sha256_hex(&bytes)), &script),
            "large.bin",
            &bytes,
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let version = created["id"].as_str().unwrap().to_owned();
    let listed = reqwest::Client::new()
        .get(format!("{endpoint}/installers?list-type=2"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(listed.contains("<Size>17000000</Size>"), "{listed}");

    // A mismatch is refused and nothing stays in the bucket.
    let (status, refused) = fleet
        .upload(
            script_metadata("Large", "2.0", Some(&"cd".repeat(32)), "true"),
            "large.bin",
            &bytes[..9_000_000],
        )
        .await;
    assert_eq!(status, 400, "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("checksum mismatch")
    );
    let listed = reqwest::Client::new()
        .get(format!("{endpoint}/installers?list-type=2"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(listed.matches("<Key>").count(), 1, "{listed}");

    // Progress as a subscription: the request appears PENDING, then the
    // download's bytes grow, then it ends INSTALLED.
    let mut updates = fleet
        .subscribe(
            "subscription($v: ID) { softwareInstallUpdates(versionId: $v) { requestId status bytesDownloaded bytesTotal } }",
            json!({ "v": version }),
        )
        .await;
    let requested = fleet.install(&version, &device).await;
    let mut seen: Vec<(String, f64)> = Vec::new();
    while seen.last().is_none_or(|(status, _)| status != "INSTALLED") {
        let message = updates
            .next(Duration::from_secs(60))
            .await
            .expect("the subscription stays open");
        let update = &message["softwareInstallUpdates"];
        assert_eq!(update["requestId"], requested["request_id"], "{message}");
        seen.push((
            update["status"].as_str().unwrap().to_owned(),
            update["bytesDownloaded"].as_f64().unwrap(),
        ));
    }
    assert_eq!(seen[0].0, "PENDING", "{seen:?}");
    assert!(
        seen.iter()
            .any(|(s, bytes)| s == "DOWNLOADING" && *bytes > 0.0),
        "download progress: {seen:?}"
    );
    assert!(
        seen.windows(2).all(|w| w[0].1 <= w[1].1),
        "bytes never go back: {seen:?}"
    );
    assert_eq!(seen.last().unwrap().1, 17_000_000.0, "{seen:?}");
    let install = fleet
        .wait_install(
            &version,
            requested["request_id"].as_str().unwrap(),
            "INSTALLED",
            Duration::from_secs(60),
        )
        .await;
    assert_eq!(install["bytes_downloaded"], 17_000_000);
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "ok\n");
    agent.kill();

    // Offboarding deletes a tenant's installers by their `<tenant id>/`
    // prefix (the platform operator's path, tested end to end on local
    // storage in licensing.rs): here the S3 backend against moto, with
    // another tenant's object left alone.
    use mobius_server::software::storage::InstallerStorage;
    let storage = mobius_server::software::storage::s3::S3Storage::new(
        mobius_server::software::storage::s3::S3Config {
            bucket: "installers".into(),
            endpoint: Some(endpoint.clone()),
            region: "us-east-1".into(),
            path_style: true,
            access_key_id: "test".into(),
            secret_access_key: "test".into(),
        },
    );
    let other = reqwest::Client::new()
        .put(format!(
            "{endpoint}/installers/{}/kept",
            uuid::Uuid::now_v7().simple()
        ))
        .body("other tenant")
        .send()
        .await
        .unwrap();
    assert!(other.status().is_success());
    let tenant = {
        let mut db = fleet.owner_connection().await;
        sea_orm::sqlx::query_scalar::<_, uuid::Uuid>("SELECT mobius_default_tenant_id()")
            .fetch_one(&mut db)
            .await
            .unwrap()
    };
    assert_eq!(storage.delete_tenant(tenant).await.unwrap(), 1);
    let listed = reqwest::Client::new()
        .get(format!("{endpoint}/installers?list-type=2"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(listed.matches("<Key>").count(), 1, "{listed}");
    assert!(listed.contains("/kept</Key>"), "{listed}");
}

#[tokio::test]
async fn an_install_pending_past_the_deadline_fails_as_device_offline_too_long() {
    // The expiry job looks every second here (hourly by default).
    let fleet = Fleet::start(&[("MOBIUS_JOB_PERIODS_SECS", "{expire-pending-installs=1}")]).await;
    // Enrolled, but its agent never runs.
    let device = fleet.enroll().await;
    let (status, created) = fleet
        .upload(
            script_metadata("Away", "1.0", None, "true"),
            "away.sh",
            b"echo",
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let version = created["id"].as_str().unwrap().to_owned();
    let requested = fleet.install(&version, &device).await;
    let request = requested["request_id"].as_str().unwrap().to_owned();
    let execution = requested["installs"][0]["execution_id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Not yet past the deadline: nothing changes.
    let store = fleet.db.app_store().await;
    let cutoff = chrono::Utc::now() - chrono::Duration::days(7);
    assert!(
        store
            .fail_stale_software_installs(cutoff, 7)
            .await
            .unwrap()
            .is_empty()
    );
    // Eight days on (the row aged behind the server's back).
    let mut db = fleet.owner_connection().await;
    sea_orm::sqlx::query("UPDATE software_installs SET created_at = now() - interval '8 days'")
        .execute(&mut db)
        .await
        .unwrap();
    // The scheduled job fails it.
    let install = fleet
        .wait_install(&version, &request, "FAILED", Duration::from_secs(15))
        .await;
    assert_eq!(
        install["reason"], "device offline too long: it did not pick the install up within 7 days",
        "{install}"
    );
    // Its execution is cancelled, so the device does not install it on return.
    let shown = fleet
        .gql(
            "query($id: ID!) { planExecution(id: $id) { status } }",
            json!({ "id": mobius_tests::global_id("PlanExecution", execution.parse().unwrap()) }),
        )
        .await;
    assert_eq!(
        shown["data"]["planExecution"]["status"], "CANCELLED",
        "{shown}"
    );
}
