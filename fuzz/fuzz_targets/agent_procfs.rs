//! The guest agent's readers of `/proc`, cgroupfs and its configuration
//! file (`guest_agent::procfs`, `guest_agent::cgroup`, `guest_agent::config`):
//! pure parsers over one file's text, fed anything.
//!
//! The first input byte picks a parser, the rest is the file. Nothing may
//! panic, and:
//! - `sanitize_text` gives at most `max` bytes, no control character, and a
//!   prefix of the unbounded result (text that needs no change is kept);
//! - a parsed `stat`'s `comm` and a `cgroup` path obey the same rules, and
//!   the path is absolute without a `..` component;
//! - `sanitize_name` gives a valid tag-ABI name (1..=32 bytes of
//!   `[A-Za-z0-9._:-]`), the input itself when it already was one;
//! - `glob_match` agrees with a plain backtracking matcher on short inputs;
//! - a `Config` that parses passes `check` again, and every container it
//!   derives from fuzzed cgroups and processes has a valid name.
#![no_main]

use accounting::abi::valid_name;
use accounting::agent::{CgroupInfo, ProcessInfo, TaskUsage, MAX_PATH, MAX_TEXT};
use guest_agent::cgroup::{
    find_cgroup2_mount, parse_cpu_stat, parse_io_stat, parse_pressure, parse_u64_file,
};
use guest_agent::config::{desired, glob_match, sanitize_name, Config};
use guest_agent::procfs::{
    parse_cgroup, parse_io, parse_stat, parse_statm, parse_status_switches, sanitize_text,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&op, text)) = data.split_first() else {
        return;
    };
    match op % 12 {
        0 => {
            if let Ok(st) = parse_stat(text) {
                check_text(&st.comm, MAX_TEXT);
            }
        }
        1 => {
            let _ = parse_status_switches(text);
            let _ = parse_io(text);
            let _ = parse_statm(text);
        }
        2 => {
            let p = parse_cgroup(text);
            check_text(&p, MAX_PATH);
            assert!(p.starts_with('/'), "cgroup path {p:?} is not absolute");
            assert!(!p.split('/').any(|c| c == ".."), "cgroup path {p:?} climbs");
        }
        3 => {
            // The first byte of the text is the bound.
            let (max, raw) = text
                .split_first()
                .map_or((0, text), |(&m, r)| (usize::from(m), r));
            let s = sanitize_text(raw, max);
            check_text(&s, max);
            let full = sanitize_text(raw, usize::MAX);
            assert!(full.starts_with(&s), "{s:?} is not a prefix of {full:?}");
            if let Ok(clean) = std::str::from_utf8(raw) {
                if clean.len() <= max && !clean.chars().any(char::is_control) {
                    assert_eq!(s, clean, "clean text was changed");
                }
            }
        }
        4 => {
            let _ = find_cgroup2_mount(text);
        }
        5 => {
            let _ = parse_cpu_stat(text);
            let _ = parse_io_stat(text);
            let _ = parse_u64_file(text);
        }
        6 => {
            if let Some(p) = parse_pressure(text) {
                for a in [p.some_avg10, p.full_avg10] {
                    assert!(a.is_finite() && a >= 0.0, "avg10 {a}");
                }
            }
        }
        7 => {
            let raw = String::from_utf8_lossy(text);
            let n = sanitize_name(&raw);
            assert!(valid_name(n.as_bytes()), "sanitize_name gave {n:?}");
            if valid_name(raw.as_bytes()) {
                assert_eq!(n, raw, "a valid name was changed");
            }
        }
        8 | 9 => {
            // Pattern, a NUL, text; `paths` from the op.
            let s = String::from_utf8_lossy(text);
            let (pat, txt) = s.split_once('\0').unwrap_or((&s, ""));
            let paths = op % 12 == 8;
            let got = glob_match(pat, txt, paths);
            if pat.len() <= 24 && txt.len() <= 48 {
                let want = reference_glob(pat.as_bytes(), txt.as_bytes(), paths);
                assert_eq!(got, want, "glob_match({pat:?}, {txt:?}, {paths})");
            }
        }
        _ => config(text),
    }
});

/// `Config::parse` on the text up to a NUL; after it, NUL-separated cgroup
/// paths and process `comm`s (alternately) for `desired`.
fn config(text: &[u8]) {
    let s = String::from_utf8_lossy(text);
    let mut parts = s.split('\0');
    let Ok(cfg) = Config::parse(parts.next().unwrap_or(""), "fuzz") else {
        return;
    };
    cfg.check().expect("a parsed config checks again");
    let mut cgroups = Vec::new();
    let mut procs = Vec::new();
    for (i, p) in parts.take(64).enumerate() {
        if i % 2 == 0 {
            cgroups.push(CgroupInfo {
                path: format!("/{p}"),
                ..CgroupInfo::default()
            });
        } else {
            procs.push(ProcessInfo {
                pid: u32::try_from(i).unwrap_or(0),
                ppid: 1,
                comm: p.to_owned(),
                cgroup: format!("/{p}"),
                usage: TaskUsage::default(),
                read_bytes: 0,
                write_bytes: 0,
                rss_bytes: 0,
                threads: Vec::new(),
                threads_omitted: 0,
            });
        }
    }
    for d in desired(&cfg, &cgroups, &procs) {
        assert!(valid_name(d.name.as_bytes()), "desired name {:?}", d.name);
    }
}

/// At most `max` bytes and no control character.
fn check_text(s: &str, max: usize) {
    assert!(s.len() <= max, "{} bytes, more than {max}", s.len());
    assert!(!s.chars().any(char::is_control), "control character in {s:?}");
}

/// Backtracking glob (memoised): `**` matches anything, `*` anything but
/// `/` when `paths` (anything otherwise), `?` one byte (not `/` when `paths`).
fn reference_glob(p: &[u8], t: &[u8], paths: bool) -> bool {
    let mut memo = vec![None; (p.len() + 1) * (t.len() + 1)];
    go(p, t, 0, 0, paths, &mut memo)
}

fn go(p: &[u8], t: &[u8], i: usize, j: usize, paths: bool, memo: &mut [Option<bool>]) -> bool {
    let key = i * (t.len() + 1) + j;
    if let Some(v) = memo[key] {
        return v;
    }
    let v = match &p[i..] {
        [] => j == t.len(),
        [b'*', b'*', ..] => (j..=t.len()).any(|k| go(p, t, i + 2, k, paths, memo)),
        [b'*', ..] => (j..=t.len())
            .take_while(|&k| !paths || k == j || t[k - 1] != b'/')
            .any(|k| go(p, t, i + 1, k, paths, memo)),
        [b'?', ..] => j < t.len() && !(paths && t[j] == b'/') && go(p, t, i + 1, j + 1, paths, memo),
        [c, ..] => j < t.len() && t[j] == *c && go(p, t, i + 1, j + 1, paths, memo),
    };
    memo[key] = Some(v);
    v
}
