//! `m2m cert dev`: a development certificate authority, a server certificate and client certificates,
//! so that TLS and mutual TLS can be tried against a node in minutes.
//!
//! Keys are ECDSA P-256 in unencrypted PKCS#8 PEM (`BEGIN PRIVATE KEY`), written with mode 0600;
//! certificates are PEM (`BEGIN CERTIFICATE`). A client certificate's common name is the device id:
//! that is how the node maps it to a device, so device ids are checked as the registry checks them.
//!
//! An existing CA in the output directory signs the new certificates, so devices can be added later.
//! Before reusing it, the few fields that matter (subject, public key, expiry) are read from `ca.pem`
//! by the small DER reader at the end of this file: rcgen parses certificates only with its
//! `x509-parser` feature, which this crate does not enable.
//!
//! Not a production PKI: the CA key has no passphrase and nothing can be revoked.

use std::fs::OpenOptions;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail, Context};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, PublicKeyData, SanType,
};

/// The common name of the CA; a `ca.pem` with another subject was not made here and is not reused.
const CA_NAME: &str = "m2m development CA";
/// The common name of the server certificate.
const SERVER_NAME: &str = "m2m node";
/// Names the server certificate is always valid for, so that a node on this machine can be reached.
const DEFAULT_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];
/// Certificates start to be valid this long before they are made, for clocks that are a little behind.
const CLOCK_SKEW_SECS: u64 = 3600;
const DAY_SECS: u64 = 86_400;

/// `m2m cert ...`
#[derive(Debug, clap::Subcommand)]
pub(crate) enum CertCommand {
    /// Makes a development CA, a server certificate and client certificates, to try TLS and mTLS.
    ///
    /// Writes into DIR (created if missing):
    ///   ca.pem, ca.key          the CA, CN "m2m development CA": clients trust ca.pem, and the node
    ///                           accepts client certificates it signed
    ///   server.pem, server.key  the node's certificate, CN "m2m node", for localhost, 127.0.0.1,
    ///                           ::1 and every --host (also for its TLS mesh links, both ways)
    ///   ID.pem, ID.key          a client certificate for each --device; its CN is the device id
    ///
    /// Keys are ECDSA P-256, unencrypted PKCS#8 PEM, readable by their owner only (mode 0600).
    ///
    /// Existing files are not overwritten unless --force is given. If DIR already holds ca.pem and
    /// ca.key, that CA signs the new certificates, so devices can be added later:
    ///
    ///   m2m cert dev --out certs --device lamp-1    # a new CA, server.pem and lamp-1.pem
    ///   m2m cert dev --out certs --device lamp-7    # the same CA signs lamp-7.pem
    ///
    /// With an existing CA, the server certificate is issued only if --host is given or its files are
    /// missing. To issue a certificate again with the same CA, delete its two files first. --force
    /// replaces every file, the CA too: certificates it signed before stop verifying.
    ///
    /// For development only: the CA key has no passphrase and certificates cannot be revoked.
    #[command(verbatim_doc_comment)]
    Dev(DevArgs),
}

/// `m2m cert dev`
#[derive(Debug, clap::Args)]
pub(crate) struct DevArgs {
    /// Directory to write into (created if missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// A DNS name or IP address the server certificate is also valid for (repeatable).
    #[arg(long = "host", value_name = "NAME")]
    hosts: Vec<String>,
    /// Issue a client certificate with this device id as its common name (repeatable).
    #[arg(long = "device", value_name = "ID")]
    devices: Vec<String>,
    /// Days the new certificates are valid (never beyond the expiry of a reused CA).
    #[arg(long, value_name = "N", default_value_t = 365,
          value_parser = clap::value_parser!(u32).range(1..=36_500))]
    days: u32,
    /// Replace existing files, making a new CA too.
    #[arg(long)]
    force: bool,
}

pub(crate) fn run(command: CertCommand) -> anyhow::Result<()> {
    match command {
        CertCommand::Dev(args) => run_dev(&args),
    }
}

/// A file to write: its name in the output directory and its PEM text.
struct Output {
    name: String,
    pem: String,
    /// A private key: readable by its owner only.
    secret: bool,
}

fn run_dev(args: &DevArgs) -> anyhow::Result<()> {
    let server_names = server_names(&args.hosts)?;
    let devices = device_ids(&args.devices)?;
    let dir = args.out.as_path();
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create directory {}", dir.display()))?;
    // `symlink_metadata`: a dangling symlink is in the way too (`create_new` refuses it).
    let exists = |name: &str| dir.join(name).symlink_metadata().is_ok();

    let reuse_ca = !args.force && exists("ca.pem") && exists("ca.key");
    // With a reused CA, an existing server certificate is kept unless new hosts are asked for.
    let keep_server = reuse_ca && args.hosts.is_empty() && exists("server.pem") && exists("server.key");
    let issue_server = !keep_server;
    let mut stems: Vec<&str> = Vec::new();
    if !reuse_ca {
        stems.push("ca");
    }
    if issue_server {
        stems.push("server");
    }
    stems.extend(devices.iter().map(String::as_str));
    if stems.is_empty() {
        bail!(
            "nothing to write: {} and {} exist (add --device ID for a client certificate, or use --force \
             to start over with a new CA)",
            dir.join("ca.pem").display(),
            dir.join("server.pem").display()
        );
    }
    if !args.force {
        let in_the_way: Vec<String> = stems
            .iter()
            .flat_map(|stem| [format!("{stem}.pem"), format!("{stem}.key")])
            .filter(|name| exists(name))
            .map(|name| dir.join(name).display().to_string())
            .collect();
        if !in_the_way.is_empty() {
            let hint = if reuse_ca {
                "delete them to issue them again with the existing CA, or use --force to start over with \
                 a new CA"
            } else {
                "use --force to replace them"
            };
            bail!("refusing to overwrite {}: {hint}", in_the_way.join(", "));
        }
    }

    let now = unix_now()?;
    let mut not_after = now + u64::from(args.days) * DAY_SECS;
    let mut outputs = Vec::new();
    let mut notes = Vec::new();
    let issuer = if reuse_ca {
        let (issuer, ca_not_after) = load_ca(dir, now)?;
        notes.push(format!("Signed by the existing CA in {}.", dir.join("ca.pem").display()));
        if ca_not_after < not_after {
            not_after = ca_not_after;
            notes.push(format!(
                "The CA expires in {} days; the new certificates expire with it.",
                (ca_not_after - now) / DAY_SECS
            ));
        }
        issuer
    } else {
        let key = KeyPair::generate().context("cannot generate the CA key")?;
        let mut params = ca_params();
        set_validity(&mut params, now, not_after);
        let cert = params.self_signed(&key).context("cannot make the CA certificate")?;
        outputs.push(Output { name: "ca.pem".into(), pem: cert.pem(), secret: false });
        outputs.push(Output { name: "ca.key".into(), pem: key.serialize_pem(), secret: true });
        Issuer::new(params, key)
    };
    if issue_server {
        outputs.extend(issue(
            &issuer,
            "server",
            SERVER_NAME,
            server_names,
            // Client authentication too: a node connects to other nodes of a mesh with it.
            &[ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
            now,
            not_after,
        )?);
    }
    for id in &devices {
        outputs.extend(issue(
            &issuer,
            id,
            id,
            Vec::new(),
            &[ExtendedKeyUsagePurpose::ClientAuth],
            now,
            not_after,
        )?);
    }

    for output in &outputs {
        let path = dir.join(&output.name);
        write_new(&path, &output.pem, output.secret, args.force)?;
        println!("{}", path.display());
    }
    print_hint(dir, devices.first().map(String::as_str), &notes);
    Ok(())
}

/// The SANs of the server certificate: the defaults and `hosts`, each once.
fn server_names(hosts: &[String]) -> anyhow::Result<Vec<SanType>> {
    let mut names = Vec::new();
    for host in DEFAULT_HOSTS.into_iter().chain(hosts.iter().map(String::as_str)) {
        let name = match host.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => {
                if let Some(why) = dns_name_problem(host) {
                    bail!("invalid --host {host:?}: it is not an IP address, and not a DNS name as {why}");
                }
                let ascii = host.to_ascii_lowercase().try_into().context("DNS name")?;
                SanType::DnsName(ascii)
            }
        };
        if !names.contains(&name) {
            names.push(name);
        }
    }
    Ok(names)
}

/// Why `name` is not a DNS name a TLS client can check a certificate against, if it is not.
fn dns_name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        return Some("it is empty");
    }
    if name.len() > 253 {
        return Some("it is longer than 253 characters");
    }
    if name.ends_with('.') {
        return Some("it ends with a dot (leave the dot out)");
    }
    let labels: Vec<&str> = name.split('.').collect();
    for (i, label) in labels.iter().enumerate() {
        if *label == "*" && i == 0 && labels.len() > 1 {
            continue; // a wildcard, `*.example.com`
        }
        if label.is_empty() {
            return Some("it has an empty label (two dots in a row, or a leading dot)");
        }
        if label.len() > 63 {
            return Some("a label is longer than 63 characters");
        }
        if !label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Some("it contains a character other than letters, digits, '-', '_' and '.'");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Some("a label starts or ends with '-'");
        }
    }
    if labels.last().is_some_and(|last| last.bytes().all(|b| b.is_ascii_digit())) {
        return Some("its last label is a number");
    }
    None
}

/// The device ids, each once, in the order given.
fn device_ids(ids: &[String]) -> anyhow::Result<Vec<String>> {
    let mut checked: Vec<String> = Vec::new();
    for id in ids {
        if let Some(why) = device_id_problem(id) {
            bail!("invalid device id {id:?}: {why}");
        }
        if !checked.contains(id) {
            checked.push(id.clone());
        }
    }
    Ok(checked)
}

/// Why `id` cannot be a device id with a certificate in `ID.pem`, if it cannot: the registry's rules
/// (so that every certificate made here names a device the registry can hold), and file names.
fn device_id_problem(id: &str) -> Option<&'static str> {
    if let Some(why) = m2m_access::name_problem(id) {
        Some(why)
    } else if id.eq_ignore_ascii_case("ca") || id.eq_ignore_ascii_case("server") {
        Some("its files would be those of the CA or the server")
    } else if Path::new(&format!("{id}.pem")).file_name() != Some(format!("{id}.pem").as_ref()) {
        Some("it cannot be a file name")
    } else {
        None
    }
}

/// The parameters of the CA, apart from its validity: a reused CA must encode to the same subject.
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, CA_NAME);
    // Path length 0: it signs leaf certificates only.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

/// Issues a leaf certificate with a new key, as `stem.pem` and `stem.key`.
fn issue(
    issuer: &Issuer<'_, KeyPair>,
    stem: &str,
    common_name: &str,
    names: Vec<SanType>,
    usages: &[ExtendedKeyUsagePurpose],
    not_before: u64,
    not_after: u64,
) -> anyhow::Result<[Output; 2]> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.subject_alt_names = names;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = usages.to_vec();
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, not_before, not_after);
    let key = KeyPair::generate().with_context(|| format!("cannot generate the key for {stem}.pem"))?;
    let cert = params.signed_by(&key, issuer).with_context(|| format!("cannot make {stem}.pem"))?;
    Ok([
        Output { name: format!("{stem}.pem"), pem: cert.pem(), secret: false },
        Output { name: format!("{stem}.key"), pem: key.serialize_pem(), secret: true },
    ])
}

/// Valid from `CLOCK_SKEW_SECS` before `now` until `not_after` (both Unix seconds).
fn set_validity(params: &mut CertificateParams, now: u64, not_after: u64) {
    // rcgen takes `time::OffsetDateTime`, which this crate cannot name without depending on `time`.
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    params.not_before = epoch + Duration::from_secs(now.saturating_sub(CLOCK_SKEW_SECS));
    params.not_after = epoch + Duration::from_secs(not_after);
}

fn unix_now() -> anyhow::Result<u64> {
    let since =
        SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).context("the clock is before 1970")?;
    Ok(since.as_secs())
}

/// Loads the CA in `dir` to sign with, checking that `ca.key` is its key, that it was made here and has
/// not expired. Returns it with its expiry (Unix seconds).
fn load_ca(dir: &Path, now: u64) -> anyhow::Result<(Issuer<'static, KeyPair>, u64)> {
    let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca.key"));
    let key_pem = std::fs::read_to_string(&key_path)
        .with_context(|| format!("cannot read the CA key {}", key_path.display()))?;
    let key = KeyPair::from_pem(&key_pem)
        .with_context(|| format!("{} is not a PEM private key", key_path.display()))?;
    let cert_pem = std::fs::read_to_string(&cert_path)
        .with_context(|| format!("cannot read the CA certificate {}", cert_path.display()))?;
    let der = pem_contents(&cert_pem, "CERTIFICATE")
        .with_context(|| format!("{} is not a PEM certificate", cert_path.display()))?;
    let found = CertFields::parse(&der)
        .with_context(|| format!("{} is not an X.509 certificate", cert_path.display()))?;

    let params = ca_params();
    let reference = params.self_signed(&key).context("cannot sign with the CA key")?;
    let expected = CertFields::parse(reference.der()).context("rcgen made an unreadable certificate")?;
    if found.subject != expected.subject {
        bail!(
            "{} was not made by `m2m cert dev` (its subject is not CN={CA_NAME}): use another --out, or \
             --force to replace it",
            cert_path.display()
        );
    }
    if found.public_key != key.subject_public_key_info() {
        bail!("{} is not the key of {}", key_path.display(), cert_path.display());
    }
    let not_after = u64::try_from(found.not_after).unwrap_or(0);
    if not_after <= now {
        bail!(
            "the CA in {} has expired: use --force to make a new one (and new certificates)",
            cert_path.display()
        );
    }
    Ok((Issuer::new(params, key), not_after))
}

/// Creates `path` with `text`, failing if it exists, unless `replace`. A `secret` file gets mode 0600
/// on Unix: it is made with that mode, so it is never readable by others, not even briefly.
fn write_new(path: &Path, text: &str, secret: bool, replace: bool) -> anyhow::Result<()> {
    if replace {
        // Removed rather than truncated: an existing file keeps its mode, which may be too open.
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot replace {}", path.display())),
        }
    }
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut file = match options.open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            bail!("refusing to overwrite {}: use --force to replace it", path.display())
        }
        Err(e) => return Err(e).with_context(|| format!("cannot write {}", path.display())),
    };
    file.write_all(text.as_bytes()).with_context(|| format!("cannot write {}", path.display()))
}

/// How to use the files: a listener for the node's configuration and a client command line.
fn print_hint(dir: &Path, device: Option<&str>, notes: &[String]) {
    // Absolute paths in the configuration: the node may run from another directory.
    let absolute = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let toml_path = |name: &str| toml::Value::String(absolute.join(name).display().to_string()).to_string();
    println!();
    for note in notes {
        println!("{note}");
    }
    if !notes.is_empty() {
        println!();
    }
    println!("To serve MQTT over TLS, add a listener to the node's configuration file:");
    println!();
    println!("    [[listeners]]");
    println!("    bind = \"0.0.0.0:8883\"");
    println!("    transport = \"tls\"");
    println!("    tls_cert = {}", toml_path("server.pem"));
    println!("    tls_key = {}", toml_path("server.key"));
    println!("    tls_client_ca = {}  # mTLS: clients need a certificate from this CA", toml_path("ca.pem"));
    println!("    require_client_cert = true");
    println!();
    println!("Clients trust ca.pem. A device presents ID.pem and ID.key; the CN is its device id:");
    let file = |name: &str| dir.join(name).display().to_string();
    let id = device.unwrap_or("ID");
    println!();
    println!(
        "    mosquitto_pub -h localhost -p 8883 --cafile {} --cert {} --key {} -t hello -m world",
        file("ca.pem"),
        file(&format!("{id}.pem")),
        file(&format!("{id}.key"))
    );
}

/// The contents of the first PEM block labelled `label`, decoded.
fn pem_contents(text: &str, label: &str) -> anyhow::Result<Vec<u8>> {
    let (begin, end) = (format!("-----BEGIN {label}-----"), format!("-----END {label}-----"));
    let start = text.find(&begin).ok_or_else(|| anyhow!("no {begin:?} line"))? + begin.len();
    let length = text[start..].find(&end).ok_or_else(|| anyhow!("no {end:?} line"))?;
    base64_decode(&text[start..start + length]).ok_or_else(|| anyhow!("invalid base64"))
}

/// Decodes standard base64 (RFC 4648 §4), ignoring whitespace; `None` on any other character.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes().filter(|c| !c.is_ascii_whitespace()) {
        let value = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => break,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(value);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// What `load_ca` checks in a certificate. RFC 5280 §4.1:
///
/// ```text
/// Certificate    ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signatureValue }
/// TBSCertificate ::= SEQUENCE { [0] version OPTIONAL, serialNumber INTEGER, signature SEQUENCE,
///                               issuer Name, validity SEQUENCE { notBefore Time, notAfter Time },
///                               subject Name, subjectPublicKeyInfo SEQUENCE, ... }
/// ```
#[derive(Debug)]
struct CertFields<'a> {
    /// The subject Name, DER-encoded.
    subject: &'a [u8],
    /// The SubjectPublicKeyInfo, DER-encoded.
    public_key: &'a [u8],
    /// notAfter, in Unix seconds.
    not_after: i64,
}

const SEQUENCE: u8 = 0x30;
const INTEGER: u8 = 0x02;
const VERSION: u8 = 0xa0;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;

impl<'a> CertFields<'a> {
    fn parse(der: &'a [u8]) -> Option<Self> {
        let (certificate, _) = Element::read(der, SEQUENCE)?;
        let (tbs, _) = Element::read(certificate.contents, SEQUENCE)?;
        let mut rest = tbs.contents;
        if rest.first() == Some(&VERSION) {
            rest = Element::read(rest, VERSION)?.1;
        }
        let (_serial, rest) = Element::read(rest, INTEGER)?;
        let (_signature, rest) = Element::read(rest, SEQUENCE)?;
        let (_issuer, rest) = Element::read(rest, SEQUENCE)?;
        let (validity, rest) = Element::read(rest, SEQUENCE)?;
        let (subject, rest) = Element::read(rest, SEQUENCE)?;
        let (public_key, _) = Element::read(rest, SEQUENCE)?;
        let (_not_before, times) = Element::read_any(validity.contents)?;
        let (not_after, _) = Element::read_any(times)?;
        Some(Self { subject: subject.whole, public_key: public_key.whole, not_after: not_after.time()? })
    }
}

/// One DER element (X.690 §8.1): a one-byte tag, a length, the contents.
struct Element<'a> {
    tag: u8,
    /// Tag, length and contents.
    whole: &'a [u8],
    contents: &'a [u8],
}

impl<'a> Element<'a> {
    /// Reads the element at the front of `input` if it has tag `tag`; returns it and what follows.
    fn read(input: &'a [u8], tag: u8) -> Option<(Self, &'a [u8])> {
        Self::read_any(input).filter(|(element, _)| element.tag == tag)
    }

    fn read_any(input: &'a [u8]) -> Option<(Self, &'a [u8])> {
        let (&tag, after_tag) = input.split_first()?;
        let (&first, mut after_length) = after_tag.split_first()?;
        let length = if first < 0x80 {
            usize::from(first)
        } else {
            // Long form: the low bits say how many length bytes follow (at most 4 here).
            let count = usize::from(first & 0x7f);
            if count == 0 || count > 4 || after_length.len() < count {
                return None;
            }
            let (bytes, rest) = after_length.split_at(count);
            after_length = rest;
            bytes.iter().fold(0usize, |n, &b| n << 8 | usize::from(b))
        };
        if after_length.len() < length {
            return None;
        }
        let header = input.len() - after_length.len();
        let whole = &input[..header + length];
        Some((Self { tag, whole, contents: &after_length[..length] }, &input[whole.len()..]))
    }

    /// A UTCTime `YYMMDDHHMMSSZ` or GeneralizedTime `YYYYMMDDHHMMSSZ` (RFC 5280 §4.1.2.5), in Unix seconds.
    fn time(&self) -> Option<i64> {
        let text = std::str::from_utf8(self.contents).ok()?;
        let digits = text.strip_suffix('Z')?;
        if !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let (year, rest) = match (self.tag, digits.len()) {
            (UTC_TIME, 12) => {
                let yy: i64 = digits[..2].parse().ok()?;
                (if yy < 50 { 2000 + yy } else { 1900 + yy }, &digits[2..])
            }
            (GENERALIZED_TIME, 14) => (digits[..4].parse().ok()?, &digits[4..]),
            _ => return None,
        };
        let field = |i: usize| rest[i..i + 2].parse::<i64>().ok();
        let (month, day, hour, minute, second) = (field(0)?, field(2)?, field(4)?, field(6)?, field(8)?);
        if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
            return None;
        }
        Some(days_from_civil(year, month, day) * DAY_SECS as i64 + hour * 3600 + minute * 60 + second)
    }
}

/// Days from 1970-01-01 to a date of the proleptic Gregorian calendar (Howard Hinnant's algorithm,
/// <https://howardhinnant.github.io/date_algorithms.html#days_from_civil>).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_decodes_the_rfc_4648_test_vectors() {
        let vectors = [("", ""), ("Zg==", "f"), ("Zm8=", "fo"), ("Zm9v", "foo"), ("Zm9vYg==", "foob")];
        for (encoded, decoded) in vectors.into_iter().chain([("Zm9vYmE=", "fooba"), ("Zm9v\nYmFy", "foobar")])
        {
            assert_eq!(base64_decode(encoded).as_deref(), Some(decoded.as_bytes()), "{encoded:?}");
        }
        assert_eq!(base64_decode("Zm9v!"), None);
    }

    #[test]
    fn days_from_civil_counts_from_the_unix_epoch() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(1969, 12, 31), -1);
        assert_eq!(days_from_civil(2024, 2, 29) + 1, days_from_civil(2024, 3, 1));
    }

    #[test]
    fn utc_and_generalized_times_read_as_unix_seconds() {
        let time = |tag, text: &str| Element { tag, whole: &[], contents: text.as_bytes() }.time();
        assert_eq!(time(UTC_TIME, "700101000000Z"), Some(0));
        assert_eq!(time(UTC_TIME, "491231235959Z"), Some(2_524_607_999));
        assert_eq!(time(GENERALIZED_TIME, "20500101000000Z"), Some(2_524_608_000));
        assert_eq!(time(UTC_TIME, "20500101000000Z"), None);
        assert_eq!(time(UTC_TIME, "701301000000Z"), None);
        assert_eq!(time(UTC_TIME, "700101000000+0100"), None);
    }

    #[test]
    fn the_der_reader_finds_what_rcgen_wrote() {
        let key = KeyPair::generate().unwrap();
        let mut params = ca_params();
        set_validity(&mut params, 1_700_000_000, 1_700_000_000 + 30 * DAY_SECS);
        let cert = params.self_signed(&key).unwrap();
        let fields = CertFields::parse(cert.der()).unwrap();
        assert_eq!(fields.public_key, key.subject_public_key_info());
        assert_eq!(fields.not_after, 1_700_000_000 + 30 * DAY_SECS as i64);
        assert!(fields.subject.windows(CA_NAME.len()).any(|w| w == CA_NAME.as_bytes()));
        let der = pem_contents(&cert.pem(), "CERTIFICATE").unwrap();
        assert_eq!(der, cert.der().as_ref());
        assert!(CertFields::parse(&der[..der.len() - 1]).is_none(), "a truncated certificate is refused");
    }

    #[test]
    fn hosts_are_ip_addresses_or_dns_names_and_the_defaults_come_first() {
        let names = server_names(&["Node.Example".into(), "10.0.0.7".into(), "localhost".into()]).unwrap();
        let expected = [
            SanType::DnsName("localhost".try_into().unwrap()),
            SanType::IpAddress([127, 0, 0, 1].into()),
            SanType::IpAddress(std::net::Ipv6Addr::LOCALHOST.into()),
            SanType::DnsName("node.example".try_into().unwrap()),
            SanType::IpAddress([10, 0, 0, 7].into()),
        ];
        assert_eq!(names, expected);
        for good in ["*.example.com", "m2m_node", "a-b.c"] {
            assert_eq!(dns_name_problem(good), None, "{good}");
        }
        for bad in ["", "a b", "a..b", "-a.b", "a.", "10.0.0.300", "*", "a.*.b", "host:1883"] {
            assert!(dns_name_problem(bad).is_some(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn device_ids_are_checked_like_the_registry_and_must_not_name_the_ca_or_server_files() {
        for good in ["lamp-7", "a", "é", &"x".repeat(128)] {
            assert_eq!(device_id_problem(good), None, "{good}");
        }
        for bad in ["", "a b", "a\tb", "a/b", "a+b", "a#b", "ca", "Server", &"x".repeat(129)] {
            assert!(device_id_problem(bad).is_some(), "{bad:?} was accepted");
        }
        assert_eq!(device_ids(&["b".into(), "a".into(), "b".into()]).unwrap(), ["b", "a"]);
    }
}
