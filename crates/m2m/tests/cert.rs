//! `m2m cert dev`, run as the built binary, its output checked independently with the `openssl` CLI:
//! chains, names, key usages and validity, so that rcgen is not checking itself.
//!
//! The tests fail (they do not skip) when `openssl` is not installed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use m2m_test::TempDir;

mod common;
use common::{m2m, run, text};

/// Runs `m2m cert dev` with `args`, requiring success; returns its standard output.
async fn cert_dev(args: &[&str]) -> String {
    let output = run(m2m(&[&["cert", "dev"], args].concat())).await;
    assert!(
        output.status.success(),
        "m2m cert dev {args:?}: exit {}: {}",
        output.status,
        text(&output.stderr)
    );
    text(&output.stdout)
}

/// Runs `m2m cert dev` with `args`, requiring failure; returns its standard error.
async fn cert_dev_fails(args: &[&str]) -> String {
    let output = run(m2m(&[&["cert", "dev"], args].concat())).await;
    assert!(!output.status.success(), "m2m cert dev {args:?} succeeded: {}", text(&output.stdout));
    text(&output.stderr)
}

/// Runs `openssl` in `dir`; returns whether it succeeded and its standard output and error.
fn openssl(dir: &Path, args: &[&str]) -> (bool, String) {
    let output = Command::new("openssl").args(args).current_dir(dir).output().unwrap_or_else(|e| {
        panic!("cannot run the openssl CLI ({e}); it checks the certificates: install it (apt-get install openssl)")
    });
    (output.status.success(), format!("{}{}", text(&output.stdout), text(&output.stderr)))
}

/// `openssl` must succeed; returns its output.
fn openssl_ok(dir: &Path, args: &[&str]) -> String {
    let (ok, out) = openssl(dir, args);
    assert!(ok, "openssl {args:?} failed: {out}");
    out
}

/// `openssl verify` of `cert` against `ca.pem` for `purpose` (`sslserver` or `sslclient`).
fn verifies(dir: &Path, cert: &str, purpose: &str) -> bool {
    let (ok, out) = openssl(dir, &["verify", "-CAfile", "ca.pem", "-purpose", purpose, cert]);
    assert_eq!(ok, out.contains(&format!("{cert}: OK")), "{out}");
    ok
}

/// The certificate's subject, as `CN=...`.
fn subject(dir: &Path, cert: &str) -> String {
    let out = openssl_ok(dir, &["x509", "-in", cert, "-noout", "-subject", "-nameopt", "RFC2253"]);
    out.trim().strip_prefix("subject=").unwrap_or(&out).to_owned()
}

/// The certificate's `extensions` (comma-separated OpenSSL names), as OpenSSL prints them.
fn extensions(dir: &Path, cert: &str, extensions: &str) -> String {
    openssl_ok(dir, &["x509", "-in", cert, "-noout", "-ext", extensions])
}

/// The key in `key` belongs to the certificate `cert`: their public keys are the same.
fn assert_key_matches(dir: &Path, cert: &str, key: &str) {
    let from_cert = openssl_ok(dir, &["x509", "-in", cert, "-noout", "-pubkey"]);
    let from_key = openssl_ok(dir, &["pkey", "-in", key, "-pubout"]);
    assert_eq!(from_cert, from_key, "{key} is not the key of {cert}");
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).expect("metadata").permissions().mode() & 0o777
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Every file in `dir` with its contents.
fn contents(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    names_in(dir).into_iter().map(|name| (dir.join(&name), read(&dir.join(name)))).collect()
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read the output directory")
        .map(|entry| entry.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn dev_writes_a_ca_a_server_and_device_certificates_that_openssl_verifies() {
    let tmp = TempDir::new("cert-dev");
    let dir = tmp.path().join("certs"); // created by the command
    let out = dir.to_str().expect("UTF-8 path");
    let args = ["--out", out, "--host", "m2m.example", "--host", "10.1.2.3", "--host", "fd00::7"];
    let stdout = cert_dev(&[&args[..], &["--device", "lamp-1", "--device", "boiler.2"]].concat()).await;

    let expected = [
        "boiler.2.key",
        "boiler.2.pem",
        "ca.key",
        "ca.pem",
        "lamp-1.key",
        "lamp-1.pem",
        "server.key",
        "server.pem",
    ];
    assert_eq!(names_in(&dir), expected);
    let listed: Vec<&str> = stdout.lines().take_while(|line| !line.is_empty()).collect();
    let mut listed_names: Vec<String> = listed
        .iter()
        .map(|line| {
            let path = Path::new(line);
            assert_eq!(path.parent(), Some(dir.as_path()), "{line}");
            path.file_name().expect("file name").to_string_lossy().into_owned()
        })
        .collect();
    listed_names.sort();
    assert_eq!(listed_names, expected, "stdout lists each file written, one per line:\n{stdout}");
    for key in ["tls_cert", "tls_key", "tls_client_ca", "[[listeners]]"] {
        assert!(stdout.contains(key), "the hint lacks {key}:\n{stdout}");
    }
    let absolute = std::fs::canonicalize(&dir).expect("canonicalize");
    let ca_line = format!("tls_client_ca = \"{}\"", absolute.join("ca.pem").display());
    assert!(stdout.contains(&ca_line), "the hint names ca.pem by its absolute path:\n{stdout}");

    #[cfg(unix)]
    for name in expected.iter().filter(|name| name.ends_with(".key")) {
        assert_eq!(mode(&dir.join(name)), 0o600, "mode of {name}");
    }
    for stem in ["ca", "server", "lamp-1", "boiler.2"] {
        let key = String::from_utf8(read(&dir.join(format!("{stem}.key")))).expect("UTF-8 key");
        assert!(key.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{stem}.key is not PKCS#8 PEM: {key}");
        assert_key_matches(&dir, &format!("{stem}.pem"), &format!("{stem}.key"));
    }

    assert_eq!(subject(&dir, "ca.pem"), "CN=m2m development CA");
    let ca_ext = extensions(&dir, "ca.pem", "basicConstraints,keyUsage");
    assert!(ca_ext.contains("CA:TRUE") && ca_ext.contains("Certificate Sign"), "{ca_ext}");
    openssl_ok(&dir, &["verify", "-CAfile", "ca.pem", "ca.pem"]);

    assert_eq!(subject(&dir, "server.pem"), "CN=m2m node");
    assert!(verifies(&dir, "server.pem", "sslserver"));
    assert!(
        verifies(&dir, "server.pem", "sslclient"),
        "a node's certificate also connects to other nodes (mesh links)"
    );
    let sans = extensions(&dir, "server.pem", "subjectAltName");
    for san in [
        "DNS:localhost",
        "IP Address:127.0.0.1",
        "IP Address:0:0:0:0:0:0:0:1",
        "DNS:m2m.example",
        "IP Address:10.1.2.3",
        "IP Address:FD00:0:0:0:0:0:0:7",
    ] {
        assert!(sans.contains(san), "server.pem lacks {san}: {sans}");
    }
    let eku = extensions(&dir, "server.pem", "extendedKeyUsage");
    assert!(eku.contains("TLS Web Server Authentication"), "{eku}");

    for id in ["lamp-1", "boiler.2"] {
        let cert = format!("{id}.pem");
        assert_eq!(subject(&dir, &cert), format!("CN={id}"));
        assert!(verifies(&dir, &cert, "sslclient"));
        assert!(!verifies(&dir, &cert, "sslserver"), "a device certificate is not a server's");
        let eku = extensions(&dir, &cert, "extendedKeyUsage");
        assert!(eku.contains("TLS Web Client Authentication") && !eku.contains("Server"), "{eku}");
    }

    // 365 days by default: valid in 364 days, expired in 366.
    for cert in ["ca.pem", "server.pem", "lamp-1.pem"] {
        openssl_ok(&dir, &["x509", "-in", cert, "-noout", "-checkend", &(364 * 86_400).to_string()]);
        let (valid_in_366_days, _) =
            openssl(&dir, &["x509", "-in", cert, "-noout", "-checkend", &(366 * 86_400).to_string()]);
        assert!(!valid_in_366_days, "{cert} is valid for more than 365 days");
    }
}

#[tokio::test]
async fn days_sets_the_validity() {
    let tmp = TempDir::new("cert-days");
    cert_dev(&["--out", tmp.as_str(), "--days", "30", "--device", "d"]).await;
    for cert in ["ca.pem", "server.pem", "d.pem"] {
        openssl_ok(tmp.path(), &["x509", "-in", cert, "-noout", "-checkend", &(29 * 86_400).to_string()]);
        let (valid_in_31_days, _) =
            openssl(tmp.path(), &["x509", "-in", cert, "-noout", "-checkend", &(31 * 86_400).to_string()]);
        assert!(!valid_in_31_days, "{cert} is valid for more than 30 days");
    }
    let stderr = cert_dev_fails(&["--out", tmp.as_str(), "--days", "0"]).await;
    assert!(stderr.contains("--days"), "{stderr}");
}

#[tokio::test]
async fn existing_files_are_not_overwritten_without_force() {
    let tmp = TempDir::new("cert-force");
    let dir = tmp.path();
    cert_dev(&["--out", tmp.as_str(), "--device", "lamp-1"]).await;
    let before = contents(dir);

    let stderr = cert_dev_fails(&["--out", tmp.as_str(), "--device", "lamp-1"]).await;
    assert!(stderr.contains(&dir.join("lamp-1.pem").display().to_string()), "names the file: {stderr}");
    assert!(stderr.contains("--force"), "{stderr}");
    // With the CA and the server certificate in place, there is nothing to do without a device.
    let stderr = cert_dev_fails(&["--out", tmp.as_str()]).await;
    assert!(stderr.contains(&dir.join("server.pem").display().to_string()), "{stderr}");
    // --host issues the server certificate again, which is in the way.
    let stderr = cert_dev_fails(&["--out", tmp.as_str(), "--host", "m2m.example"]).await;
    assert!(stderr.contains(&dir.join("server.pem").display().to_string()), "{stderr}");
    let after = contents(dir);
    assert!(before == after, "a refused run changed files");

    // A key left with a loose mode gets 0600 when it is replaced.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let loose = std::fs::Permissions::from_mode(0o644);
        std::fs::set_permissions(dir.join("lamp-1.key"), loose).expect("chmod");
    }
    cert_dev(&["--out", tmp.as_str(), "--device", "lamp-1", "--force"]).await;
    assert!(read(&dir.join("ca.pem")) != before[&dir.join("ca.pem")], "--force makes a new CA");
    #[cfg(unix)]
    assert_eq!(mode(&dir.join("lamp-1.key")), 0o600);
    assert!(verifies(dir, "lamp-1.pem", "sslclient"));
    assert!(verifies(dir, "server.pem", "sslserver"));
}

#[tokio::test]
async fn a_later_device_is_signed_by_the_existing_ca() {
    let tmp = TempDir::new("cert-reuse");
    let dir = tmp.path();
    cert_dev(&["--out", tmp.as_str(), "--device", "lamp-1"]).await;
    let kept: Vec<(&str, Vec<u8>)> =
        ["ca.pem", "ca.key", "server.pem", "server.key", "lamp-1.pem", "lamp-1.key"]
            .into_iter()
            .map(|name| (name, read(&dir.join(name))))
            .collect();

    let stdout = cert_dev(&["--out", tmp.as_str(), "--device", "lamp-7"]).await;
    let listed: Vec<&str> = stdout.lines().take_while(|line| !line.is_empty()).collect();
    let lamp_7 = |ext: &str| dir.join(format!("lamp-7.{ext}")).display().to_string();
    assert_eq!(listed, [lamp_7("pem"), lamp_7("key")], "{stdout}");
    assert!(stdout.contains("existing CA"), "{stdout}");
    for (name, bytes) in kept {
        assert!(read(&dir.join(name)) == bytes, "{name} changed");
    }
    assert!(verifies(dir, "lamp-7.pem", "sslclient"));
    assert_eq!(subject(dir, "lamp-7.pem"), "CN=lamp-7");
    assert_key_matches(dir, "lamp-7.pem", "lamp-7.key");

    // Deleting the server certificate issues it again, for more hosts, from the same CA.
    std::fs::remove_file(dir.join("server.pem")).expect("rm");
    std::fs::remove_file(dir.join("server.key")).expect("rm");
    cert_dev(&["--out", tmp.as_str(), "--host", "gateway.local"]).await;
    assert!(verifies(dir, "server.pem", "sslserver"));
    assert!(extensions(dir, "server.pem", "subjectAltName").contains("DNS:gateway.local"));
}

#[tokio::test]
async fn a_ca_that_does_not_match_its_key_is_not_reused() {
    let tmp = TempDir::new("cert-mismatch");
    let dir = tmp.path();
    cert_dev(&["--out", tmp.as_str(), "--device", "lamp-1"]).await;
    std::fs::copy(dir.join("lamp-1.key"), dir.join("ca.key")).expect("copy");
    let stderr = cert_dev_fails(&["--out", tmp.as_str(), "--device", "lamp-7"]).await;
    assert!(stderr.contains("is not the key of"), "{stderr}");
    assert!(!dir.join("lamp-7.pem").exists());

    std::fs::copy(dir.join("server.pem"), dir.join("ca.pem")).expect("copy");
    let stderr = cert_dev_fails(&["--out", tmp.as_str(), "--device", "lamp-7"]).await;
    assert!(stderr.contains("was not made by `m2m cert dev`"), "{stderr}");
}

#[tokio::test]
async fn a_bad_device_id_is_an_error_naming_the_problem() {
    let tmp = TempDir::new("cert-bad-id");
    for (id, problem) in [
        ("lamp 7", "whitespace"),
        ("lamp/7", "'+', '#' or '/'"),
        ("lamp+", "'+', '#' or '/'"),
        ("", "empty"),
        ("ca", "the CA or the server"),
    ] {
        let stderr = cert_dev_fails(&["--out", tmp.as_str(), "--device", "ok", "--device", id]).await;
        assert!(stderr.contains(&format!("invalid device id {id:?}")), "{stderr}");
        assert!(stderr.contains(problem), "{stderr}");
    }
    let long = "x".repeat(129);
    let stderr = cert_dev_fails(&["--out", tmp.as_str(), "--device", &long]).await;
    assert!(stderr.contains("longer than 128 characters"), "{stderr}");
    assert!(names_in(tmp.path()).is_empty(), "nothing is written: {:?}", names_in(tmp.path()));
}

#[tokio::test]
async fn a_bad_host_is_an_error_naming_it() {
    let tmp = TempDir::new("cert-bad-host");
    for host in ["exa mple.com", "m2m.example:8883", "10.0.0.300", "a..b"] {
        let stderr = cert_dev_fails(&["--out", tmp.as_str(), "--host", host]).await;
        assert!(stderr.contains(&format!("invalid --host {host:?}")), "{stderr}");
    }
    assert!(names_in(tmp.path()).is_empty(), "nothing is written: {:?}", names_in(tmp.path()));
}

#[tokio::test]
async fn an_out_path_that_is_not_a_directory_is_an_error_naming_it() {
    let tmp = TempDir::new("cert-not-dir");
    let file = tmp.path().join("file");
    std::fs::write(&file, "not a directory").expect("write");
    let out = file.join("certs");
    let stderr = cert_dev_fails(&["--out", out.to_str().expect("UTF-8 path")]).await;
    assert!(stderr.contains(&format!("cannot create directory {}", out.display())), "{stderr}");
}

#[tokio::test]
async fn the_help_explains_the_files_and_the_reuse_of_an_existing_ca() {
    let output = run(m2m(&["cert", "dev", "--help"])).await;
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{}", text(&output.stderr));
    for words in ["ca.pem", "server.key", "ID.pem", "that CA signs the new certificates", "--force", "0600"] {
        assert!(stdout.contains(words), "the help lacks {words:?}:\n{stdout}");
    }
}
