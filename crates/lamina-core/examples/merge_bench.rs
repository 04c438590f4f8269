//! Merge benchmark (issue 4): 10 layers × 10,000 small files merged into one tree, Lamina
//! against `cp -al` of the same trees and a plain `cp -a`, in one run.
//!
//! Usage (as root, on a fresh scratch file system; `bench/merge_bench.sh` makes one):
//!
//! ```text
//! merge_bench WORKDIR [RUNS]      # RUNS defaults to 5
//! ```
//!
//! Setup (untimed): a Lamina store (overlayfs backend) at `WORKDIR/store` and
//! `LAYERS` = 10 inputs, each a two-layer chain built with `apply_layer` from in-memory tars:
//! - `base-i`: 100 directories `dNN/` × 100 regular files `dNN/fI-KK`, 1–8 KiB each of
//!   deterministic pseudo-random bytes (the directory names are the same in every input,
//!   the file names differ, so the merged tree has 100 directories of 1,000 files each);
//! - `top-i` on `base-i`: one more file, `d00/extra-I` (1 KiB).
//!
//! Every method produces the same tree, `10 × 10,001` regular files in 100 directories:
//! 1. **Lamina hard-link merge**: `merge(key, [("", top-0), …, ("", top-9)])`. Each input
//!    is a whole two-layer tree, not one layer over its parent, so Lamina walks the
//!    overlay view of each chain and writes the merged tree: a `mkdir` per directory, a
//!    `link` per file, metadata of directories, its own disk usage, then `syncfs`. This
//!    is the method comparable with `cp -al`.
//! 2. **Lamina stacked merge**: `merge(key, [("", base-0), (base-0, top-0), ("", base-1),
//!    …])`. Every input is one snapshot's own layer over its parent, so the merged
//!    snapshot stacks the 20 layer directories (no file work), then `syncfs`.
//! 3. **`cp -al`**: `cp -al TREE/. DEST/` for each of the 20 layer directories in the same
//!    order (base-0, top-0, base-1, …; the snapshots' own directories under
//!    `store/snapshots/<id>/fs`), then `sync -f DEST`.
//! 4. **`cp -a`**: the same with `cp -a` (file data copied), then `sync -f DEST`.
//!
//! Lamina's merge always ends with a `syncfs`, so both `cp` methods end with one too
//! (`sync -f`). The page cache stays warm for all methods: each runs once untimed first,
//! and nothing drops caches. Each run times every method once, in an order rotated by
//! run, and the result of every run (timed or not) is checked: its list of entries (path
//! and type) must equal that of `cp -al`. Between methods, untimed: the result is
//! removed and the file system synced. Times are wall seconds; CPU is user+sys of this
//! process (Lamina) or of the `cp`/`sync` children.
//!
//! Output: a Markdown table of medians on stdout, per-run rows on stderr.
//! `MERGE_BENCH_DIRS` (default 100) sets the directories per input, for smoke tests.

use std::error::Error;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use lamina_core::layer::ApplyOptions;
use lamina_core::{BackendKind, DiffSpec, Labels, MergeMethod, Snapshotter, StoreConfig};
use tar::{Builder, EntryType, Header};

type BoxResult<T> = std::result::Result<T, Box<dyn Error>>;

/// Inputs merged.
const LAYERS: usize = 10;
/// Regular files per directory of one input.
const FILES_PER_DIR: usize = 100;
/// Same modification time for everything, so trees compare equal.
const MTIME: u64 = 1_700_000_000;

/// The four methods, in the table's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    HardLink,
    Stacked,
    CpAl,
    CpA,
}

const METHODS: [Method; 4] = [Method::HardLink, Method::Stacked, Method::CpAl, Method::CpA];

impl Method {
    fn name(self) -> &'static str {
        match self {
            Method::HardLink => "Lamina merge, hard links (`(\"\", top-i)`)",
            Method::Stacked => "Lamina merge, stacked (each layer over its parent)",
            Method::CpAl => "`cp -al` of the 20 layer trees + `sync -f`",
            Method::CpA => "`cp -a` of the 20 layer trees + `sync -f`",
        }
    }

    fn short(self) -> &'static str {
        match self {
            Method::HardLink => "hardlink",
            Method::Stacked => "stacked",
            Method::CpAl => "cp-al",
            Method::CpA => "cp-a",
        }
    }
}

/// xorshift64*: deterministic content without a dependency.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

fn header(kind: EntryType, mode: u32, size: u64) -> Header {
    let mut h = Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(MTIME);
    h
}

/// Input `layer`'s base layer: `dirs` directories × 100 files of 1–8 KiB.
fn base_tar(layer: usize, dirs: usize) -> BoxResult<Vec<u8>> {
    let mut b = Builder::new(Vec::with_capacity(dirs * FILES_PER_DIR * 5120));
    let mut data = vec![0u8; 8192];
    for d in 0..dirs {
        let mut h = header(EntryType::Directory, 0o755, 0);
        b.append_data(&mut h, format!("d{d:02}/"), std::io::empty())?;
        for f in 0..FILES_PER_DIR {
            let mut rng = Rng::new(((layer * 1000 + d) * 1000 + f) as u64 + 1);
            let size = 1024 + (rng.next() % (8192 - 1024 + 1)) as usize;
            rng.fill(&mut data[..size]);
            let mode = if f % 10 == 0 { 0o755 } else { 0o644 };
            let mut h = header(EntryType::Regular, mode, size as u64);
            b.append_data(&mut h, format!("d{d:02}/f{layer}-{f:02}"), &data[..size])?;
        }
    }
    Ok(b.into_inner()?)
}

/// Input `layer`'s second layer: one 1 KiB file.
fn top_tar(layer: usize) -> BoxResult<Vec<u8>> {
    let mut b = Builder::new(Vec::new());
    let mut h = header(EntryType::Directory, 0o755, 0);
    b.append_data(&mut h, "d00/", std::io::empty())?;
    let mut data = vec![0u8; 1024];
    Rng::new(0xE0_0000 + layer as u64).fill(&mut data);
    let mut h = header(EntryType::Regular, 0o644, data.len() as u64);
    b.append_data(&mut h, format!("d00/extra-{layer}"), &data[..])?;
    Ok(b.into_inner()?)
}

/// The layer directory of committed snapshot `name` (its own upper dir), read from the
/// mounts of a throwaway view: a one-layer view is a bind of it, a deeper one an overlay
/// whose first lower dir it is.
fn layer_dir(store: &Snapshotter, name: &str) -> BoxResult<PathBuf> {
    let view = format!("bench-dir-of/{name}");
    let mounts = store.view(&view, name, Labels::new())?;
    store.remove(&view)?;
    let m = mounts.first().ok_or("a view without mounts")?;
    let dir = match m.kind.as_str() {
        "bind" => m.source.clone(),
        "overlay" => m
            .options
            .iter()
            .find_map(|o| o.strip_prefix("lowerdir="))
            .and_then(|l| l.split(':').next())
            .ok_or("an overlay view without lowerdir")?
            .to_string(),
        other => return Err(format!("unexpected mount type {other}").into()),
    };
    Ok(PathBuf::from(dir))
}

/// Every entry under `root` (not `root` itself) as "type path", sorted.
fn listing(root: &Path) -> BoxResult<Vec<String>> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in std::fs::read_dir(root.join(&rel))? {
            let e = e?;
            let ft = e.file_type()?;
            let path = rel.join(e.file_name());
            let kind = if ft.is_dir() {
                stack.push(path.clone());
                'd'
            } else if ft.is_file() {
                'f'
            } else if ft.is_symlink() {
                'l'
            } else {
                'o'
            };
            out.push(format!("{kind} {}", path.display()));
        }
    }
    out.sort();
    Ok(out)
}

/// The listing of merged snapshot `key`, through a mounted read-only view of it.
fn merged_listing(store: &Snapshotter, key: &str, mnt: &Path) -> BoxResult<Vec<String>> {
    let view = format!("bench-check/{key}");
    let mounts = store.view(&view, key, Labels::new())?;
    let listed = (|| -> BoxResult<Vec<String>> {
        lamina_core::sys::mount_all(&mounts, mnt)?;
        let l = listing(mnt);
        lamina_core::sys::unmount(mnt)?;
        l
    })();
    store.remove(&view)?;
    listed
}

/// User + system CPU seconds of this process or of its waited-for children.
fn cpu_seconds(who: libc::c_int) -> f64 {
    // SAFETY: getrusage only writes the rusage struct it is given, which is zeroed and
    // owned here; `who` is RUSAGE_SELF or RUSAGE_CHILDREN.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(who, &mut ru);
        ru
    };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn run_cmd(cmd: &mut Command) -> BoxResult<()> {
    let status = cmd.status()?;
    if !status.success() {
        return Err(format!("{cmd:?} failed: {status}").into());
    }
    Ok(())
}

struct Bench {
    store: Snapshotter,
    work: PathBuf,
    mnt: PathBuf,
    /// The 20 layer directories, in merge order.
    trees: Vec<PathBuf>,
    hardlink_specs: Vec<DiffSpec>,
    stacked_specs: Vec<DiffSpec>,
    /// What every method must produce (set by the first `cp -al`).
    expected: Option<Vec<String>>,
    runs: u64,
}

impl Bench {
    /// Runs `method` once: (wall seconds, CPU seconds, entry list of the result).
    fn once(&mut self, method: Method) -> BoxResult<(f64, f64, Vec<String>)> {
        self.runs += 1;
        let key = format!("bench-merge/{}/{}", method.short(), self.runs);
        let dest = self.work.join(format!("dest-{}", method.short()));
        let (secs, cpu, listed) = match method {
            Method::HardLink | Method::Stacked => {
                let (specs, want) = if method == Method::HardLink {
                    (&self.hardlink_specs, MergeMethod::HardLinked)
                } else {
                    (&self.stacked_specs, MergeMethod::Stacked)
                };
                let cpu0 = cpu_seconds(libc::RUSAGE_SELF);
                let t0 = Instant::now();
                let report = self.store.merge(&key, specs, Labels::new())?;
                let secs = t0.elapsed().as_secs_f64();
                let cpu = cpu_seconds(libc::RUSAGE_SELF) - cpu0;
                if report.method != want {
                    return Err(
                        format!("{key}: merged by {:?}, not {want:?}", report.method).into(),
                    );
                }
                let listed = merged_listing(&self.store, &key, &self.mnt)?;
                self.store.remove(&key)?;
                (secs, cpu, listed)
            }
            Method::CpAl | Method::CpA => {
                std::fs::create_dir(&dest)?;
                let flags = if method == Method::CpAl { "-al" } else { "-a" };
                let cpu0 = cpu_seconds(libc::RUSAGE_CHILDREN);
                let t0 = Instant::now();
                for tree in &self.trees {
                    let mut src = tree.clone().into_os_string();
                    src.push("/.");
                    run_cmd(Command::new("cp").arg(flags).arg(&src).arg(&dest))?;
                }
                run_cmd(Command::new("sync").arg("-f").arg(&dest))?;
                let secs = t0.elapsed().as_secs_f64();
                let cpu = cpu_seconds(libc::RUSAGE_CHILDREN) - cpu0;
                let listed = listing(&dest)?;
                std::fs::remove_dir_all(&dest)?;
                (secs, cpu, listed)
            }
        };
        // The next method starts with no writeback of this one pending.
        lamina_core::sys::syncfs(&self.work)?;
        if self.expected.is_none() && method == Method::CpAl {
            self.expected = Some(listed.clone());
        }
        Ok((secs, cpu, listed))
    }

    fn check(&self, method: Method, listed: &[String]) -> BoxResult<()> {
        let Some(expected) = &self.expected else {
            return Ok(());
        };
        if listed != expected.as_slice() {
            let missing = expected.iter().find(|e| !listed.contains(e));
            let extra = listed.iter().find(|e| !expected.contains(e));
            return Err(format!(
                "{}: {} entries, cp -al made {} (first missing: {missing:?}, first extra: {extra:?})",
                method.short(),
                listed.len(),
                expected.len()
            )
            .into());
        }
        Ok(())
    }
}

/// A time ratio, with more digits when it is tiny (the stacked merge).
fn ratio(x: f64) -> String {
    if x < 0.1 {
        format!("{x:.4}×")
    } else {
        format!("{x:.2}×")
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn main() -> BoxResult<()> {
    let mut args = std::env::args_os().skip(1);
    let work = PathBuf::from(args.next().ok_or("usage: merge_bench WORKDIR [RUNS]")?);
    let runs: usize = match args.next() {
        Some(r) => r.to_str().ok_or("RUNS is not a number")?.parse()?,
        None => 5,
    };
    let dirs: usize = match std::env::var("MERGE_BENCH_DIRS") {
        Ok(d) => d.parse()?,
        Err(_) => 100,
    };
    if runs == 0 || dirs == 0 {
        return Err("RUNS and MERGE_BENCH_DIRS must be at least 1".into());
    }
    if !rustix::process::geteuid().is_root() {
        return Err("run as root: the store sets owners and the check mounts overlays".into());
    }
    std::fs::create_dir_all(&work)?;
    let mnt = work.join("check-mnt");
    std::fs::create_dir_all(&mnt)?;
    let store = Snapshotter::open(StoreConfig::new(work.join("store"), BackendKind::Overlayfs))?;

    let t0 = Instant::now();
    let mut trees = Vec::new();
    let mut hardlink_specs = Vec::new();
    let mut stacked_specs = Vec::new();
    for i in 0..LAYERS {
        let (base, top) = (format!("base-{i}"), format!("top-{i}"));
        let tar = base_tar(i, dirs)?;
        let opts = ApplyOptions::default();
        store.apply_layer(&base, "", Labels::new(), &tar[..], opts)?;
        let tar = top_tar(i)?;
        let opts = ApplyOptions::default();
        store.apply_layer(&top, &base, Labels::new(), &tar[..], opts)?;
        trees.push(layer_dir(&store, &base)?);
        trees.push(layer_dir(&store, &top)?);
        hardlink_specs.push(DiffSpec::new("", top.as_str()));
        stacked_specs.push(DiffSpec::new("", base.as_str()));
        stacked_specs.push(DiffSpec::new(base.as_str(), top.as_str()));
    }
    lamina_core::sys::syncfs(&work)?;
    let files = (LAYERS * (dirs * FILES_PER_DIR + 1)) as f64;
    eprintln!(
        "setup: {LAYERS} inputs × ({dirs} dirs × {FILES_PER_DIR} files + 1), {files} files, {:.1} s",
        t0.elapsed().as_secs_f64()
    );

    let mut bench = Bench {
        store,
        work,
        mnt,
        trees,
        hardlink_specs,
        stacked_specs,
        expected: None,
        runs: 0,
    };
    // Warm-up, untimed: cp -al first, as it gives the expected listing.
    for m in [Method::CpAl, Method::HardLink, Method::Stacked, Method::CpA] {
        let (secs, _, listed) = bench.once(m)?;
        bench.check(m, &listed)?;
        eprintln!(
            "warm-up {:<8} {secs:.3} s, {} entries",
            m.short(),
            listed.len()
        );
    }
    let mut wall: Vec<Vec<f64>> = vec![Vec::new(); METHODS.len()];
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); METHODS.len()];
    for run in 0..runs {
        for k in 0..METHODS.len() {
            let idx = (k + run) % METHODS.len();
            let m = METHODS[idx];
            let (secs, c, listed) = bench.once(m)?;
            bench.check(m, &listed)?;
            eprintln!("run {} {:<8} {secs:.3} s  cpu {c:.3} s", run + 1, m.short());
            wall[idx].push(secs);
            cpu[idx].push(c);
        }
    }

    let med: Vec<f64> = wall.iter_mut().map(|v| median(v)).collect();
    let med_cpu: Vec<f64> = cpu.iter_mut().map(|v| median(v)).collect();
    let (cpal, cpa) = (med[2], med[3]);
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{LAYERS} inputs × {} files ({dirs} dirs), {files} files merged, medians of {runs} runs\n",
        dirs * FILES_PER_DIR + 1
    )?;
    writeln!(
        out,
        "| method | median s | CPU s | files/s | time ÷ `cp -al` | `cp -a` ÷ time |"
    )?;
    writeln!(out, "|---|---:|---:|---:|---:|---:|")?;
    for (i, m) in METHODS.iter().enumerate() {
        writeln!(
            out,
            "| {} | {:.3} | {:.3} | {:.0} | {} | {:.1}× |",
            m.name(),
            med[i],
            med_cpu[i],
            files / med[i],
            ratio(med[i] / cpal),
            cpa / med[i]
        )?;
    }
    Ok(())
}
