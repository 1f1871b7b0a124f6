//! The C and C++ test programs (`examples/*.c`, `examples/*.cpp`), built
//! with the system compilers through the pkg-config file against the
//! library cargo just built, run against a real dmabufd over RPC binder.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// target/<profile>: this test runs from target/<profile>/deps.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

/// `cargo build` of `args` in this test's profile. Cargo does not build a
/// package's cdylib/staticlib (nor another package's binary) before
/// running its integration tests, so the test builds what it links and runs.
fn cargo_build(args: &[&str]) {
    let mut cmd = Command::new(env!("CARGO"));
    cmd.arg("build")
        .args(args)
        .current_dir(crate_dir().join("../.."));
    if profile_dir().file_name().is_some_and(|p| p == "release") {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("cargo build");
    assert!(status.success(), "cargo build {args:?} failed");
}

/// The service binary, built now so it is never stale.
fn dmabufd_binary() -> PathBuf {
    cargo_build(&["-p", "dmabufd", "--bin", "dmabufd"]);
    profile_dir().join("dmabufd")
}

/// The C library (shared and static), built now: a clean checkout has none.
fn build_library() {
    cargo_build(&["-p", "dmabufd-capi", "--lib"]);
    for lib in ["libdmabufd_c.so", "libdmabufd_c.a"] {
        assert!(profile_dir().join(lib).exists(), "cargo built no {lib}");
    }
}

struct Service {
    child: Child,
    dir: PathBuf,
    socket: PathBuf,
}

impl Service {
    fn start(name: &str, config: &str) -> Service {
        let dir = std::env::temp_dir().join(format!("dmabufd-capi-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("dmabufd.toml"), config).unwrap();
        let socket = dir.join("dmabufd.sock");
        let child = Command::new(dmabufd_binary())
            .arg("--config")
            .arg(dir.join("dmabufd.toml"))
            .arg("--rpc")
            .arg(&socket)
            .env("DMABUFD_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn dmabufd");
        let deadline = Instant::now() + Duration::from_secs(20);
        while dmabufd_client::Allocator::connect_rpc(&socket).is_err() {
            assert!(Instant::now() < deadline, "dmabufd did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
        Service { child, dir, socket }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// dmabufd.pc for the build tree, in `dir`.
fn write_pc(dir: &Path) {
    let template = std::fs::read_to_string(crate_dir().join("dmabufd.pc.in")).unwrap();
    let pc = template
        .replace("@PREFIX@", &profile_dir().display().to_string())
        .replace("@LIBDIR@", &profile_dir().display().to_string())
        .replace(
            "@INCLUDEDIR@",
            &crate_dir().join("include").display().to_string(),
        );
    std::fs::write(dir.join("dmabufd.pc"), pc).unwrap();
}

fn pkg_config(dir: &Path, args: &[&str]) -> Vec<String> {
    let out = Command::new("pkg-config")
        .args(args)
        .arg("dmabufd")
        .env("PKG_CONFIG_PATH", dir)
        .output()
        .expect("pkg-config (tests/run-all.sh installs it)");
    assert!(
        out.status.success(),
        "pkg-config: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// Compiles `source` with `compiler` into `dir`; returns the program.
fn compile(dir: &Path, compiler: &str, source: &str, link: &[String]) -> PathBuf {
    let exe = dir.join(Path::new(source).file_stem().unwrap());
    let out = Command::new(compiler)
        .args(["-Wall", "-Wextra", "-Werror", "-O1"])
        .args(if compiler == "c++" {
            &["-std=c++17"][..]
        } else {
            &["-std=c11"][..]
        })
        .args(pkg_config(dir, &["--cflags"]))
        .arg(crate_dir().join("examples").join(source))
        .arg("-o")
        .arg(&exe)
        .args(link)
        .output()
        .unwrap_or_else(|e| panic!("{compiler}: {e} (tests/run-all.sh installs gcc and g++)"));
    assert!(
        out.status.success(),
        "{compiler} {source} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    exe
}

fn run(exe: &Path, svc: &Service) {
    let out = Command::new(exe).arg(&svc.socket).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success() && stdout.contains("\n0 failed"),
        "{} failed ({}):\n{stdout}\n{}",
        exe.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!stdout.contains("FAILED"), "{stdout}");
}

/// The C program, linked to the shared library (`pkg-config --libs`).
#[test]
fn c_program_allocates_maps_passes_and_gets_every_error_code() {
    let svc = Service::start(
        "c",
        "[heaps]\ndefault_max_size = \"16M\"\n[quota]\ndefault_buffers = 4\n",
    );
    build_library();
    write_pc(&svc.dir);
    let mut link = pkg_config(&svc.dir, &["--libs"]);
    link.push(format!("-Wl,-rpath,{}", profile_dir().display()));
    let exe = compile(&svc.dir, "cc", "alloc_test.c", &link);
    run(&exe, &svc);
}

/// The C++ wrapper's program, linked to the static library
/// (`pkg-config --libs --static`, the archive named explicitly).
#[test]
fn cpp_buffer_allocator_program_allocates_syncs_and_reports_errors() {
    let svc = Service::start("cpp", "[heaps]\ndefault_max_size = \"16M\"\n");
    build_library();
    write_pc(&svc.dir);
    let mut link = vec![profile_dir().join("libdmabufd_c.a").display().to_string()];
    link.extend(
        pkg_config(&svc.dir, &["--libs", "--static"])
            .into_iter()
            .filter(|a| a != "-ldmabufd_c" && !a.starts_with("-L")),
    );
    let exe = compile(&svc.dir, "c++", "buffer_allocator_test.cpp", &link);
    run(&exe, &svc);
}
