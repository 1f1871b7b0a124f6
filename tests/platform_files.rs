//! Keeps the platform files honest: the Android build file, init rc, VINTF
//! fragment, sepolicy, frozen AIDL dump, systemd unit and rsb_hub policy must
//! agree with each other and with the code. The sepolicy is compiled for
//! real: m4 expands the .te files with stand-ins for the AOSP macros
//! (sepolicy/test/te_macros.m4), and checkpolicy builds a full policy with a
//! minimal base, which also checks every neverallow.
//!
//! Needs `m4` and `checkpolicy` (Debian: `apt-get install -y checkpolicy m4`);
//! fails, rather than skips, when they are missing.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use dmabufd::privileges::KEPT_CAPABILITIES;
use dmabufd::{MEMTRACK_SERVICE_NAME, SERVICE_NAME};

const SERVICE_BINARY: &str = "/vendor/bin/hw/vendor.dmabuf-service";
const RC_FILE: &str = "etc/init/vendor.dmabuf-service.rc";
const VINTF_FILE: &str = "etc/vintf/vendor.dmabuf-service.xml";
const MEMTRACK_VINTF_FILE: &str = "etc/vintf/android.hardware.memtrack-dmabufd.xml";
const MEMTRACK_AIDL_DIR: &str = "aidl/android/hardware/memtrack";
const HUB_POLICY: &str = "etc/rsb_hub/dmabufd.toml";
const API_DIR: &str = "aidl_api/vendor.dmabuf";
const AIDL_DIR: &str = "aidl/vendor/dmabuf";
/// The version the service implements: aidl/ == aidl_api/.../<this> == current.
const LATEST_FROZEN: &str = "2";
/// The project's policy, in the order a device build would concatenate it.
const TE_FILES: &[&str] = &[
    "attributes",
    "device.te",
    "service.te",
    "hal_dmabuf_allocator.te",
    "hal_dmabuf_allocator_default.te",
    "hal_memtrack_dmabufd.te",
];
/// The header `aidl --dumpapi` puts into every frozen file.
const FROZEN_HEADER: &str = "\
///////////////////////////////////////////////////////////////////////////////
// THIS FILE IS IMMUTABLE. DO NOT EDIT IN ANY CASE.                          //
///////////////////////////////////////////////////////////////////////////////

// This file is a snapshot of an AIDL file. Do not edit it manually. There are
// two cases:
// 1). this is a frozen version file - do not edit this in any case.
// 2). this is a 'current' file. If you make a backwards compatible change to
//     the interface (from the latest frozen version), the build system will
//     prompt you to update this file with `m <name>-update-api`.
//
// You must not make a backward incompatible change to any AIDL file built
// with the aidl_interface module type with versions property set. The module
// type is used to build AIDL files in a way that they can be used across
// independently updatable components of the system. If a device is shipped
// with such a backward incompatible change, it has a high risk of breaking
// later when a module using the interface is updated, e.g., Mainline modules.

";

/// The project root. Cargo names it; Soong sets no CARGO_MANIFEST_DIR (not
/// even with cargo_env_compat) and installs the test's `data` files next to
/// the test binary instead.
fn root() -> PathBuf {
    match option_env!("CARGO_MANIFEST_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => std::env::current_exe()
            .unwrap()
            .parent()
            .unwrap()
            .to_path_buf(),
    }
}

fn read(rel: &str) -> String {
    let p = root().join(rel);
    fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Lines without `#` comments and blank lines.
fn content_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
}

/// The text of the Android.bp module `kind { name: "<name>", ... }`.
fn bp_module(bp: &str, kind: &str, name: &str) -> String {
    let mut rest = bp;
    while let Some(start) = rest.find(&format!("\n{kind} {{\n")) {
        let body = &rest[start + 1..];
        let end = body.find("\n}\n").expect("unterminated Android.bp module") + 2;
        let module = &body[..end];
        if bp_str(module, "name").as_deref() == Some(name) {
            return module.to_string();
        }
        rest = &body[end..];
    }
    panic!("Android.bp has no {kind} named {name}");
}

/// A top-level `key: "value",` of a module.
fn bp_str(module: &str, key: &str) -> Option<String> {
    module.lines().find_map(|l| {
        let v = l.strip_prefix(&format!("    {key}: \""))?;
        Some(v.trim_end_matches(',').trim_end_matches('"').to_string())
    })
}

/// The text between `<tag>` and `</tag>`.
fn xml_tag<'a>(xml: &'a str, tag: &str) -> &'a str {
    let open = format!("<{tag}>");
    let start = xml.find(&open).unwrap_or_else(|| panic!("no <{tag}>")) + open.len();
    let end = xml[start..].find(&format!("</{tag}>")).unwrap() + start;
    xml[start..end].trim()
}

/// The `type` field of an SELinux context `u:object_r:<type>:s0`.
fn context_type(context: &str) -> String {
    let parts: Vec<&str> = context.split(':').collect();
    assert_eq!(parts.len(), 4, "bad context {context}");
    assert_eq!((parts[0], parts[1], parts[3]), ("u", "object_r", "s0"));
    parts[2].to_string()
}

#[test]
fn instance_name_is_the_same_everywhere() {
    let xml = read(VINTF_FILE);
    assert_eq!(xml_tag(&xml, "name"), "vendor.dmabuf");
    assert_eq!(
        xml_tag(&xml, "version"),
        LATEST_FROZEN,
        "the manifest names the latest frozen version"
    );
    let vintf_instance = format!("{}.{}", xml_tag(&xml, "name"), xml_tag(&xml, "fqname"));
    assert_eq!(vintf_instance, SERVICE_NAME, "{VINTF_FILE}");

    let contexts = read("sepolicy/service_contexts");
    let names: Vec<&str> = content_lines(&contexts)
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(names, [SERVICE_NAME], "sepolicy/service_contexts");

    let rc = read(RC_FILE);
    let interfaces: Vec<String> = content_lines(&rc)
        .filter_map(|l| l.strip_prefix("interface aidl "))
        .map(str::to_string)
        .collect();
    assert_eq!(
        interfaces,
        [SERVICE_NAME, MEMTRACK_SERVICE_NAME],
        "{RC_FILE}"
    );

    // rsb_hub: the first rule whose pattern covers the name decides (its
    // own semantics), and it must let the service user add and the client
    // uids find.
    let uids = |perm: &str| hub_uids(SERVICE_NAME, perm);
    let service_uid = service_uid();
    assert_eq!(
        uids("add"),
        BTreeSet::from([service_uid]),
        "only dmabufd registers"
    );
    for client in [0, 1000, 10001, 10002] {
        assert!(uids("find").contains(&client), "uid {client} cannot find");
    }
    assert!(!uids("find").contains(&service_uid) || service_uid == 0);
}

/// The uid the service runs as (etc/dmabufd.toml).
fn service_uid() -> i64 {
    let config: toml::Table = toml::from_str(&read("etc/dmabufd.toml")).unwrap();
    config["service"]["user"].as_integer().unwrap()
}

/// The uids the rsb_hub rule deciding `name` grants `perm` ("add", "find"):
/// the first rule whose pattern covers the name decides (rsb_hub's own
/// semantics), and it must not be the catch-all.
fn hub_uids(name: &str, perm: &str) -> BTreeSet<i64> {
    let hub: toml::Table = toml::from_str(&read(HUB_POLICY)).unwrap();
    let rules = hub["rule"].as_array().expect("[[rule]] tables");
    let rule = rules
        .iter()
        .find(|r| {
            let pattern = r["name"].as_str().unwrap();
            match pattern.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix),
                None => pattern == name,
            }
        })
        .unwrap_or_else(|| panic!("no rsb_hub rule covers {name}"));
    assert_ne!(
        rule["name"].as_str(),
        Some("*"),
        "only the catch-all covers {name}"
    );
    rule[perm]["uid"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_integer().unwrap())
        .collect()
}

/// The memtrack HAL: declared by its own VINTF fragment (installed with the
/// service), in the rc, allowed by rsb_hub to the service uid only, served
/// by the allocator's SELinux domain under the platform's label, and built
/// from the platform's definition on Android (no aidl_interface of ours).
#[test]
fn memtrack_instance_is_declared_everywhere() {
    let xml = read(MEMTRACK_VINTF_FILE);
    assert_eq!(xml_tag(&xml, "name"), "android.hardware.memtrack");
    assert_eq!(xml_tag(&xml, "version"), "1", "memtrack is frozen at v1");
    let instance = format!("{}.{}", xml_tag(&xml, "name"), xml_tag(&xml, "fqname"));
    assert_eq!(instance, MEMTRACK_SERVICE_NAME);

    let bp = read("Android.bp");
    let service = bp_module(&bp, "rust_binary", "vendor.dmabuf-service");
    assert!(service.contains(&format!("\"{MEMTRACK_VINTF_FILE}\"")));
    assert!(
        !bp.contains("name: \"android.hardware.memtrack\""),
        "Android.bp must not redeclare the platform's android.hardware.memtrack"
    );
    let genrule = bp_module(&bp, "genrule", "dmabufd_generated_rs");
    assert!(genrule.contains(&format!("\"{MEMTRACK_AIDL_DIR}/*.aidl\"")));
    assert!(genrule.contains("\"android_hardware_memtrack.rs\""));

    assert_eq!(
        hub_uids(MEMTRACK_SERVICE_NAME, "add"),
        BTreeSet::from([service_uid()])
    );
    for client in [0, 1000] {
        assert!(hub_uids(MEMTRACK_SERVICE_NAME, "find").contains(&client));
    }

    // The platform labels the instance; a second label would break lookups.
    let contexts = read("sepolicy/service_contexts");
    assert!(!content_lines(&contexts).any(|l| l.starts_with(MEMTRACK_SERVICE_NAME)));
    let te = read("sepolicy/hal_memtrack_dmabufd.te");
    assert!(content_lines(&te)
        .any(|l| l == "hal_server_domain(hal_dmabuf_allocator_default, hal_memtrack)"));
    assert!(declared_names(&read("sepolicy/test/platform_memtrack.te"))
        .contains("hal_memtrack_service"));
}

/// The AIDL written for the Linux build carries the frozen v1 contract:
/// package, method order, enum values, constants and field order.
#[test]
fn memtrack_aidl_matches_the_frozen_v1_contract() {
    let body = |file: &str| -> Vec<String> {
        let text = read(&format!("{MEMTRACK_AIDL_DIR}/{file}"));
        // Declarations only: no comments, no blank lines.
        let mut out = Vec::new();
        let mut in_comment = false;
        for line in text.lines().map(str::trim) {
            if in_comment || line.starts_with("/*") {
                in_comment = !line.ends_with("*/");
                continue;
            }
            if !line.is_empty() && !line.starts_with("//") {
                out.push(line.to_string());
            }
        }
        out
    };
    let package = "package android.hardware.memtrack;";
    let iface = body("IMemtrack.aidl");
    assert_eq!(iface[0], package);
    assert!(iface.contains(&"@VintfStability".to_string()));
    let methods: Vec<&String> = iface.iter().filter(|l| l.ends_with(");")).collect();
    assert_eq!(
        methods,
        [
            "MemtrackRecord[] getMemory(in int pid, in MemtrackType type);",
            "DeviceInfo[] getGpuDeviceInfo();"
        ]
    );
    let record = body("MemtrackRecord.aidl");
    assert_eq!(record[0], package);
    let flags: Vec<(String, u32)> = record
        .iter()
        .filter_map(|l| l.strip_prefix("const int "))
        .map(|l| {
            let (name, value) = l.trim_end_matches(';').split_once(" = ").unwrap();
            let shift: u32 = value.strip_prefix("1 << ").unwrap().parse().unwrap();
            (name.to_string(), 1u32 << shift)
        })
        .collect();
    let want = [
        ("FLAG_SMAPS_ACCOUNTED", 2),
        ("FLAG_SMAPS_UNACCOUNTED", 4),
        ("FLAG_SHARED", 8),
        ("FLAG_SHARED_PSS", 16),
        ("FLAG_PRIVATE", 32),
        ("FLAG_SYSTEM", 64),
        ("FLAG_DEDICATED", 128),
        ("FLAG_NONSECURE", 256),
        ("FLAG_SECURE", 512),
    ];
    assert_eq!(
        flags,
        want.map(|(n, v)| (n.to_string(), v)).to_vec(),
        "MemtrackRecord constants"
    );
    let fields: Vec<&String> = record
        .iter()
        .filter(|l| l.ends_with(';') && !l.starts_with("const ") && !l.starts_with("package "))
        .collect();
    assert_eq!(fields, ["int flags;", "long sizeInBytes;"]);
    let ty = body("MemtrackType.aidl");
    assert!(ty.contains(&"@Backing(type=\"int\")".to_string()));
    let values: Vec<&String> = ty.iter().filter(|l| l.contains(" = ")).collect();
    assert_eq!(
        values,
        [
            "OTHER = 0,",
            "GL = 1,",
            "GRAPHICS = 2,",
            "MULTIMEDIA = 3,",
            "CAMERA = 4,"
        ]
    );
    let info = body("DeviceInfo.aidl");
    let fields: Vec<&String> = info
        .iter()
        .filter(|l| l.ends_with(';') && !l.starts_with("package "))
        .collect();
    assert_eq!(fields, ["int id;", "@utf8InCpp String name;"]);
}

#[test]
fn memtrack_sepolicy_lets_only_the_allocator_serve_memtrack() {
    // The allocator's domain registers memtrack under the platform's rules
    // (a neverallow against it trips over the grant), and nobody else does.
    let (ok, log) = compile_policy(
        "memtrack-add",
        "neverallow hal_dmabuf_allocator_default hal_memtrack_service:service_manager add;",
    );
    assert!(
        !ok && log.contains("neverallow"),
        "the allocator cannot add memtrack:\n{log}"
    );
    let (ok, log) = compile_policy(
        "memtrack-add-others",
        "neverallow { domain -hal_dmabuf_allocator_default } hal_memtrack_service:service_manager add;",
    );
    assert!(ok, "another domain may add memtrack:\n{log}");
    // Another vendor domain registering it, or an app finding it, is refused.
    for (i, rule) in [
        "allow dmabuf_test_client hal_memtrack_service:service_manager add;",
        "allow untrusted_app hal_memtrack_service:service_manager find;",
    ]
    .iter()
    .enumerate()
    {
        let (ok, log) = compile_policy(&format!("memtrack-violation{i}"), rule);
        assert!(
            !ok && log.contains("neverallow"),
            "`{rule}` accepted:\n{log}"
        );
    }
    // system_server (dumpsys meminfo) calls the allocator's domain.
    let (ok, log) = compile_policy(
        "memtrack-call",
        "neverallow system_server hal_dmabuf_allocator_default:binder call;",
    );
    assert!(
        !ok && log.contains("neverallow"),
        "system_server cannot call memtrack:\n{log}"
    );
}

#[test]
fn binary_path_is_the_same_everywhere() {
    let bp = read("Android.bp");
    let service = bp_module(&bp, "rust_binary", "vendor.dmabuf-service");
    assert!(service.contains("\n    vendor: true,"), "a vendor HAL");
    let installed = format!(
        "/vendor/bin/{}/{}",
        bp_str(&service, "relative_install_path").unwrap(),
        bp_str(&service, "stem").unwrap()
    );
    assert_eq!(installed, SERVICE_BINARY);
    for file in [RC_FILE, VINTF_FILE] {
        assert!(
            service.contains(&format!("\"{file}\"")),
            "Android.bp does not install {file}"
        );
    }

    let rc = read(RC_FILE);
    let service_line = content_lines(&rc)
        .find(|l| l.starts_with("service "))
        .unwrap()
        .to_string();
    let fields: Vec<&str> = service_line.split_whitespace().collect();
    assert_eq!(fields[2], SERVICE_BINARY, "{RC_FILE}");

    // file_contexts: the binary's regex must match the installed path and
    // give it the _exec type that init_daemon_domain transitions on.
    let fc = read("sepolicy/file_contexts");
    let entry = content_lines(&fc)
        .find(|l| l.contains("/bin/hw/"))
        .expect("file_contexts labels no HAL binary")
        .to_string();
    let fields: Vec<&str> = entry.split_whitespace().collect();
    let regex = fields[0];
    let grep = Command::new("grep")
        .args(["-qxE", regex])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(format!("{SERVICE_BINARY}\n").as_bytes())?;
            child.wait()
        })
        .expect("grep");
    assert!(grep.success(), "{regex} does not match {SERVICE_BINARY}");
    let exec_type = context_type(fields[1]);
    let te = read("sepolicy/hal_dmabuf_allocator_default.te");
    let domain = exec_type.strip_suffix("_exec").expect("an _exec type");
    assert!(te.contains(&format!("init_daemon_domain({domain})")));
}

#[test]
fn kept_capabilities_are_the_same_everywhere() {
    let kept: Vec<String> = KEPT_CAPABILITIES.iter().map(|c| c.to_string()).collect();
    assert_eq!(kept, ["CAP_SYS_PTRACE"]);

    // init keeps it for the (non-root) service: `capabilities SYS_PTRACE`.
    let rc = read(RC_FILE);
    let rc_caps: Vec<String> = content_lines(&rc)
        .filter_map(|l| l.strip_prefix("capabilities "))
        .flat_map(|l| l.split_whitespace().map(|c| format!("CAP_{c}")))
        .collect();
    assert_eq!(rc_caps, kept, "{RC_FILE}");

    // sepolicy lets the domain use it, and no other capability.
    let te = read("sepolicy/hal_dmabuf_allocator_default.te");
    let te_caps: Vec<String> = content_lines(&te)
        .filter(|l| l.contains(":capability "))
        .map(|l| {
            let perms = l.split(":capability ").nth(1).unwrap();
            format!("CAP_{}", perms.trim_end_matches(';').trim().to_uppercase())
        })
        .collect();
    assert_eq!(te_caps, kept, "sepolicy capability rules");

    // systemd: the bounding set holds what the drop needs, what loading the
    // BPF iterators needs, plus what the procfs fallback keeps.
    let unit = read("etc/systemd/dmabufd.service");
    let bounding: BTreeSet<&str> = content_lines(&unit)
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("CapabilityBoundingSet")
        .split_whitespace()
        .collect();
    let mut expected: BTreeSet<&str> = [
        "CAP_SETUID",
        "CAP_SETGID",
        "CAP_SETPCAP",
        "CAP_BPF",
        "CAP_PERFMON",
    ]
    .into();
    expected.extend(kept.iter().map(String::as_str));
    assert_eq!(bounding, expected);
    assert!(
        content_lines(&unit).any(|l| l == "ExecStart=/usr/bin/dmabufd --config /etc/dmabufd.toml")
    );
}

/// The `.aidl` files under `dir`, keyed by their path relative to it
/// ("./vendor/dmabuf/X.aidl", as `find ./` prints them).
fn aidl_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(base, &path, out);
            } else if path.extension().is_some_and(|e| e == "aidl") {
                let rel = path.strip_prefix(base).unwrap().to_str().unwrap();
                out.insert(format!("./{rel}"), fs::read(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// What `m vendor.dmabuf-freeze-api` stores in `.hash`: the sha1 of the
/// `sha1sum` listing of the dump's .aidl files (in C-locale path order)
/// followed by the previous version ("latest-version" for version 1).
fn aosp_api_hash(files: &BTreeMap<String, Vec<u8>>, previous: &str) -> String {
    let mut listing = String::new();
    // BTreeMap<String> orders by bytes, as `LC_ALL=C sort -z` does.
    for (path, bytes) in files {
        let digest = sha1_smol::Sha1::from(bytes).digest();
        listing += &format!("{digest}  {path}\n");
    }
    listing += previous;
    listing += "\n";
    sha1_smol::Sha1::from(listing).digest().to_string()
}

#[test]
fn frozen_api_matches_the_sources() {
    let bp = read("Android.bp");
    let iface = bp_module(&bp, "aidl_interface", "vendor.dmabuf");
    for v in ["1", LATEST_FROZEN] {
        assert!(
            iface.contains(&format!("version: \"{v}\"")),
            "versions_with_info lists {v}"
        );
    }
    assert!(iface.contains("frozen: true"));
    assert!(iface.contains("stability: \"vintf\""));
    let mut versions: Vec<String> = fs::read_dir(root().join(API_DIR))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    versions.sort();
    assert_eq!(
        versions,
        ["1", LATEST_FROZEN, "current"],
        "a new version needs this test updated"
    );

    // The latest frozen version and `current` are aidl/ plus the header;
    // the memtrack AIDL under aidl/android is the platform's, not ours.
    let sources: BTreeMap<String, Vec<u8>> = aidl_files(&root().join("aidl"))
        .into_iter()
        .filter(|(path, _)| path.starts_with("./vendor/"))
        .collect();
    assert_eq!(
        sources.len(),
        fs::read_dir(root().join(AIDL_DIR)).unwrap().count()
    );
    for version in [LATEST_FROZEN, "current"] {
        let dump = aidl_files(&root().join(API_DIR).join(version));
        assert_eq!(
            dump.keys().collect::<Vec<_>>(),
            sources.keys().collect::<Vec<_>>(),
            "{API_DIR}/{version} has other files than aidl/"
        );
        for (path, frozen) in &dump {
            let frozen = String::from_utf8(frozen.clone()).unwrap();
            // The header sits after the leading comment block, before `package`.
            let split = if frozen.starts_with("/*") {
                frozen.find("*/\n").unwrap() + 3
            } else {
                0
            };
            let (lead, rest) = frozen.split_at(split);
            let body = rest
                .strip_prefix(FROZEN_HEADER)
                .unwrap_or_else(|| panic!("{version}/{path}: no frozen-file header"));
            let source = String::from_utf8(sources[path].clone()).unwrap();
            assert_eq!(
                format!("{lead}{body}"),
                source,
                "{version}/{path} differs from aidl/"
            );
        }
    }

    // Each frozen version carries the hash Soong verifies, computed over its
    // own files and the version before it: a byte changed in version 1 after
    // it was frozen breaks its hash. `current` has none.
    for (version, previous) in [("1", "latest-version"), (LATEST_FROZEN, "1")] {
        let dump = aidl_files(&root().join(API_DIR).join(version));
        let stored = read(&format!("{API_DIR}/{version}/.hash"));
        let stored = stored.split_whitespace().next().expect("empty .hash");
        assert_eq!(
            aosp_api_hash(&dump, previous),
            stored,
            "{API_DIR}/{version}/.hash"
        );
    }
    assert!(!root().join(API_DIR).join("current/.hash").exists());
}

/// The hash of version 1 as frozen in the first release: version 1 stays
/// byte-for-byte what shipped.
#[test]
fn version_1_is_unchanged_since_it_was_frozen() {
    let stored = read(&format!("{API_DIR}/1/.hash"));
    assert_eq!(stored.trim(), "2658585c6846cab120eea926b211e6f2fc8ca8a6");
    let dump = aidl_files(&root().join(API_DIR).join("1"));
    assert_eq!(
        aosp_api_hash(&dump, "latest-version"),
        "2658585c6846cab120eea926b211e6f2fc8ca8a6"
    );
}

#[test]
fn api_hash_follows_the_aosp_recipe() {
    // sha1 of "<sha1 of \"x\">  ./a.aidl\nlatest-version\n", computed with
    // `printf x > a.aidl; (find ./ -name "*.aidl" -print0 | LC_ALL=C sort -z |
    // xargs -0 sha1sum && echo latest-version) | sha1sum`.
    let files = BTreeMap::from([("./a.aidl".to_string(), b"x".to_vec())]);
    assert_eq!(
        aosp_api_hash(&files, "latest-version"),
        "bb0808324c936e00750245ceff1b67136bef28b8"
    );
}

/// Declared names (types and attributes) in policy text.
fn declared_names(te: &str) -> BTreeSet<String> {
    content_lines(te)
        .filter_map(|l| {
            let l = l.trim_end_matches(';');
            let decl = l
                .strip_prefix("type ")
                .or_else(|| l.strip_prefix("attribute "))?;
            Some(decl.split(',').next().unwrap().trim().to_string())
        })
        .collect()
}

#[test]
fn contexts_files_use_declared_types() {
    let mut project = BTreeSet::new();
    for f in TE_FILES {
        project.extend(declared_names(&read(&format!("sepolicy/{f}"))));
    }
    // hal_attribute(dmabuf_allocator) declares the three HAL attributes.
    let attributes = read("sepolicy/attributes");
    assert!(attributes.contains("hal_attribute(dmabuf_allocator)"));
    let platform = declared_names(&read("sepolicy/test/platform.te"));
    let shadowed: Vec<_> = project.intersection(&platform).collect();
    assert!(
        shadowed.is_empty(),
        "platform stubs redeclare project types: {shadowed:?}"
    );

    for file in ["sepolicy/file_contexts", "sepolicy/service_contexts"] {
        let text = read(file);
        let mut n = 0;
        for line in content_lines(&text) {
            let context = line.split_whitespace().last().unwrap();
            let ty = context_type(context);
            assert!(
                project.contains(&ty),
                "{file}: {ty} is not declared in sepolicy/"
            );
            n += 1;
        }
        assert!(n > 0, "{file} is empty");
    }
}

fn require_tool(tool: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "`{tool}` is needed to check the sepolicy for real; install it with \
         `apt-get install -y checkpolicy m4` (tests/run-all.sh does)"
    );
}

/// Expands the project's policy (plus `extra` rules) and compiles it with
/// checkpolicy against the minimal base. Returns checkpolicy's result.
fn compile_policy(name: &str, extra: &str) -> (bool, String) {
    require_tool("m4");
    require_tool("checkpolicy");
    let sepolicy = root().join("sepolicy");
    let tmp = std::env::temp_dir().join(format!("dmabufd-sepolicy-{}-{name}", std::process::id()));
    fs::create_dir_all(&tmp).unwrap();
    let extra_file = tmp.join("extra.te");
    fs::write(&extra_file, extra).unwrap();

    let mut m4_inputs = vec![
        sepolicy.join("test/te_macros.m4"),
        sepolicy.join("test/platform.te"),
        sepolicy.join("test/platform_memtrack.te"),
    ];
    m4_inputs.extend(TE_FILES.iter().map(|f| sepolicy.join(f)));
    m4_inputs.push(sepolicy.join("test/test_client.te"));
    m4_inputs.push(extra_file);
    let expanded = Command::new("m4")
        .arg("-E")
        .args(&m4_inputs)
        .output()
        .unwrap();
    assert!(
        expanded.status.success(),
        "m4 failed: {}",
        String::from_utf8_lossy(&expanded.stderr)
    );
    let te = String::from_utf8(expanded.stdout).unwrap();
    // A macro m4 did not know would pass through unexpanded and then read as
    // a syntax error; say which instead.
    for mac in [
        "hal_attribute(",
        "binder_call(",
        "r_dir_file(",
        "init_daemon_domain(",
    ] {
        assert!(!te.contains(mac), "m4 left {mac} unexpanded");
    }

    let conf = tmp.join("policy.conf");
    fs::write(
        &conf,
        [
            read("sepolicy/test/base_head.conf"),
            te,
            read("sepolicy/test/base_tail.conf"),
        ]
        .concat(),
    )
    .unwrap();
    let out = Command::new("checkpolicy")
        .arg("-M")
        .arg("-o")
        .arg(tmp.join("policy.bin"))
        .arg(&conf)
        .output()
        .unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let ok = out.status.success() && tmp.join("policy.bin").exists();
    fs::remove_dir_all(&tmp).ok();
    (ok, log)
}

#[test]
fn sepolicy_compiles_with_checkpolicy() {
    let (ok, log) = compile_policy("plain", "");
    assert!(ok, "checkpolicy rejected the policy:\n{log}");
}

#[test]
fn sepolicy_neverallows_are_enforced() {
    // Each rule breaks one promise the policy makes; checkpolicy must refuse
    // every one of them because of a neverallow.
    let violations = [
        // A HAL client opening udmabuf itself instead of asking the service.
        "allow dmabuf_test_client dmabuf_allocator_udmabuf_device:chr_file { open read write ioctl };",
        // An app opening a heap dedicated to the allocator.
        "allow untrusted_app dmabuf_allocator_heap_device:chr_file { open read ioctl };",
        // Another domain registering (impersonating) the allocator.
        "allow dmabuf_test_client hal_dmabuf_allocator_service:service_manager add;",
        // A domain that is not a HAL client looking it up.
        "allow untrusted_app hal_dmabuf_allocator_service:service_manager find;",
    ];
    for (i, rule) in violations.iter().enumerate() {
        let (ok, log) = compile_policy(&format!("violation{i}"), rule);
        assert!(!ok, "checkpolicy accepted `{rule}`");
        assert!(
            log.contains("neverallow"),
            "`{rule}` failed for another reason:\n{log}"
        );
    }
}

#[test]
fn system_heap_cannot_be_exclusive_next_to_the_platform_policy() {
    // Why hal_dmabuf_allocator.te has no neverallow on dmabuf_system_heap_device:
    // with the platform's own allow rules (apps, system_server) it could
    // never build.
    let rule = "neverallow { domain -hal_dmabuf_allocator_server } dmabuf_system_heap_device:chr_file open;";
    let (ok, log) = compile_policy("system-heap-exclusive", rule);
    assert!(
        !ok && log.contains("neverallow"),
        "expected a neverallow failure:\n{log}"
    );
}

#[test]
fn sepolicy_rejects_undeclared_types() {
    // The compile above is what proves every type the .te files use is
    // declared: an unknown name is an error, not a silently empty set.
    let (ok, log) = compile_policy(
        "undeclared",
        "allow hal_dmabuf_allocator_default no_such_type:file read;",
    );
    assert!(!ok, "checkpolicy accepted an undeclared type");
    assert!(log.contains("no_such_type"), "{log}");
}

const SYSTEMD_UNIT: &str = "etc/systemd/dmabufd.service";

/// Runs `systemd-analyze verify` on `unit_text` saved as
/// `<dir>/dmabufd.service`; returns (exit ok, every line it printed).
fn systemd_verify(dir: &Path, unit_text: &str) -> (bool, String) {
    fs::create_dir_all(dir).unwrap();
    let path = dir.join("dmabufd.service");
    fs::write(&path, unit_text).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .unwrap_or_else(|e| panic!("systemd-analyze: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The shipped unit, with ExecStart pointing at the dmabufd this test
/// suite built (verify checks that the binary exists and is executable).
fn unit_with_built_binary() -> String {
    let unit = read(SYSTEMD_UNIT);
    let shipped = "ExecStart=/usr/bin/dmabufd ";
    assert!(unit.contains(shipped), "{SYSTEMD_UNIT}: no {shipped:?}");
    unit.replace(
        shipped,
        &format!("ExecStart={} ", env!("CARGO_BIN_EXE_dmabufd")),
    )
}

/// Lines of `systemd-analyze verify` output about our unit: any is a
/// finding (an unknown key, a bad value, a missing binary). verify exits 0
/// on most of them, so its exit code alone proves nothing.
fn findings(output: &str) -> Vec<&str> {
    output
        .lines()
        .filter(|l| l.contains("dmabufd.service"))
        .collect()
}

#[test]
fn systemd_unit_passes_systemd_analyze_verify_without_findings() {
    require_tool_from("systemd-analyze", "systemd");
    let dir = std::env::temp_dir().join(format!("dmabufd-unit-{}", std::process::id()));
    let (ok, out) = systemd_verify(&dir, &unit_with_built_binary());
    assert!(
        ok && findings(&out).is_empty(),
        "systemd-analyze verify:\n{out}"
    );
    // The check catches what it is there for: a typo in a key, an unknown
    // syscall group, a missing binary.
    for (bad, what) in [
        ("NoNewPrivileges=yes", "NoNewPrivilege=yes"),
        (
            "SystemCallFilter=@system-service",
            "SystemCallFilter=@sytem-service",
        ),
    ] {
        let unit = unit_with_built_binary().replace(bad, what);
        let (ok, out) = systemd_verify(&dir, &unit);
        assert!(
            !ok || !findings(&out).is_empty(),
            "{what} went unnoticed:\n{out}"
        );
    }
    let unit = read(SYSTEMD_UNIT).replace("/usr/bin/dmabufd", "/nonexistent/dmabufd");
    let (ok, out) = systemd_verify(&dir, &unit);
    assert!(
        !ok || !findings(&out).is_empty(),
        "missing binary unnoticed:\n{out}"
    );
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn systemd_unit_has_the_hardening_the_service_allows() {
    let unit = read(SYSTEMD_UNIT);
    let lines: Vec<&str> = content_lines(&unit).collect();
    for want in [
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "RestrictAddressFamilies=AF_UNIX",
        "SystemCallArchitectures=native",
        "SystemCallErrorNumber=EPERM",
        "RuntimeDirectory=dmabufd",
        "RuntimeDirectoryPreserve=restart",
        "LockPersonality=yes",
        "RestrictRealtime=yes",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectControlGroups=yes",
        "MemoryDenyWriteExecute=yes",
        "RestrictNamespaces=yes",
        "RestrictSUIDSGID=yes",
    ] {
        assert!(lines.contains(&want), "{SYSTEMD_UNIT} lacks {want}");
    }
    // The syscall filter: the service set, plus bpf() for the BPF holder
    // tracking; nothing taken away that the job needs.
    let filter: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("SystemCallFilter="))
        .collect();
    assert_eq!(filter, ["@system-service bpf"], "{SYSTEMD_UNIT}");
    // What would break it stays out: hiding other processes or the devices.
    for absent in ["ProtectProc=", "PrivateDevices=", "ProcSubset="] {
        assert!(
            !lines.iter().any(|l| l.starts_with(absent)),
            "{SYSTEMD_UNIT}: {absent} would hide what the service reads"
        );
    }
}

/// Like `require_tool`, naming the Debian package that provides it.
fn require_tool_from(tool: &str, package: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "`{tool}` is needed to check {SYSTEMD_UNIT}; install it with \
         `apt-get install -y {package}` (tests/run-all.sh does)"
    );
}
