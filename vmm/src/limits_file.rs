//! `--limits FILE`: per-container limits from a JSON file
//! (docs/limits-per-container.md), the same keys and values as `--limit`.
//!
//! ```json
//! { "limits": [
//!     { "container": "web", "blk-ops": "100/s", "blk-ops-burst": 50 },
//!     { "container": "batch/*", "net-tx-frames": "1000/s" }
//! ] }
//! ```
//!
//! Every entry is parsed by [`ContainerLimit::from_keys`], the flag's own
//! parser, inside the JSON deserializer, so an error names the file, the
//! entry's container and key, and the line and column. The API's
//! `PUT /v1/limits` bodies use the same entry form ([`LimitEntry`]).

use std::fmt;
use std::path::Path;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use crate::config::{ContainerLimit, MAX_CONTAINER_LIMITS};

/// Largest limits file read, in bytes (64 entries fit many times over).
pub const MAX_LIMITS_FILE_BYTES: u64 = 1 << 20;

/// The file: `{"limits": [ENTRY, ...]}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsFile {
    limits: Vec<LimitEntry>,
}

/// One entry: `"container": PATH` (unless the container is given
/// elsewhere, as in `PUT /v1/limits/{container}`) and `--limit`'s keys,
/// each value a string (`"100/s"`, `"4KiB"`) or, for a burst, a whole
/// number.
#[derive(Debug)]
pub struct LimitEntry {
    /// The container path given in the entry, if any.
    pub container: Option<String>,
    /// Its keys and values, in order.
    pub pairs: Vec<(String, String)>,
}

impl LimitEntry {
    /// The limit on `path` (`source` starts the errors).
    pub fn limit(&self, path: &str, source: &str) -> Result<ContainerLimit, String> {
        let pairs: Vec<(&str, &str)> = self.pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        ContainerLimit::from_keys(path, &pairs, source)
    }
}

/// Most keys in one entry (every rate key of `--limit` and its burst,
/// `container`, headroom): a hostile body cannot make an entry grow
/// without bound.
const MAX_ENTRY_KEYS: usize = 2 * crate::config::LIMIT_KEYS.len() + 8;

impl<'de> Deserialize<'de> for LimitEntry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct EntryVisitor;
        impl<'de> Visitor<'de> for EntryVisitor {
            type Value = LimitEntry;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"an object such as {"container": "web", "blk-ops": "100/s"}"#)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<LimitEntry, A::Error> {
                let mut container = None;
                let mut pairs: Vec<(String, String)> = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    if pairs.len() >= MAX_ENTRY_KEYS {
                        return Err(de::Error::custom("too many keys in one limit"));
                    }
                    let value = map.next_value::<Value>()?.0;
                    if key == "container" {
                        if container.is_some() {
                            return Err(de::Error::custom("`container` given twice"));
                        }
                        container = Some(value);
                    } else if pairs.iter().any(|(k, _)| *k == key) {
                        return Err(de::Error::custom(format!("`{key}` given twice")));
                    } else {
                        pairs.push((key, value));
                    }
                }
                let entry = LimitEntry { container, pairs };
                // Checked here, so that the error carries its line.
                if let Some(path) = &entry.container {
                    entry.limit(path, "limit").map_err(de::Error::custom)?;
                }
                Ok(entry)
            }
        }
        d.deserialize_map(EntryVisitor)
    }
}

/// A value: a string, or a whole number written as one.
struct Value(String);

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Value;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"a string such as "100/s" or "1MiB/s", or a whole number for a burst"#)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
                Ok(Value(v.to_owned()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
                Ok(Value(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// The limits of entries `entries` as given in `source` (each must name
/// its container): one per path, at most [`MAX_CONTAINER_LIMITS`].
pub fn limits_of(entries: &[LimitEntry], source: &str) -> Result<Vec<ContainerLimit>, String> {
    if entries.len() > MAX_CONTAINER_LIMITS {
        return Err(format!(
            "{source}: {} limits is too many: at most {MAX_CONTAINER_LIMITS}",
            entries.len()
        ));
    }
    let mut out: Vec<ContainerLimit> = Vec::with_capacity(entries.len());
    for (i, e) in entries.iter().enumerate() {
        let Some(path) = &e.container else {
            return Err(format!(
                r#"{source}: limit {} names no container: add "container": "PATH""#,
                i + 1
            ));
        };
        let l = e.limit(path, source)?;
        if out.iter().any(|o| o.path == l.path) {
            return Err(format!(
                "{source} {path}: given twice: one limit per container path"
            ));
        }
        out.push(l);
    }
    Ok(out)
}

/// Parses a limits file's text; `name` is how errors name it.
pub fn parse(text: &str, name: &str) -> Result<Vec<ContainerLimit>, String> {
    parse_as(text, &format!("--limits {name}"))
}

/// Parses the text of a limits file (or a `PUT /v1/limits` body);
/// `source` starts every error.
pub fn parse_as(text: &str, source: &str) -> Result<Vec<ContainerLimit>, String> {
    let file: LimitsFile = serde_json::from_str(text).map_err(|e| {
        format!(
            r#"{source}: {e} (expected {{"limits": [{{"container": "PATH", "blk-ops": "100/s", ...}}]}})"#
        )
    })?;
    limits_of(&file.limits, source)
}

/// Reads and parses the limits file at `path`.
pub fn load(path: &Path) -> Result<Vec<ContainerLimit>, String> {
    use std::io::Read;
    let name = path.display().to_string();
    let f = std::fs::File::open(path).map_err(|e| format!("--limits {name}: cannot open: {e}"))?;
    let mut text = String::new();
    f.take(MAX_LIMITS_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("--limits {name}: cannot read it as UTF-8 text: {e}"))?;
    if text.len() as u64 > MAX_LIMITS_FILE_BYTES {
        return Err(format!(
            "--limits {name}: larger than {MAX_LIMITS_FILE_BYTES} bytes"
        ));
    }
    parse(&text, &name)
}

/// The `--limit` flags and the file's limits together; a path in both is
/// refused (neither silently wins).
pub fn merge(
    flags: Vec<ContainerLimit>,
    file: Vec<ContainerLimit>,
    name: &str,
) -> Result<Vec<ContainerLimit>, String> {
    if let Some(l) = file.iter().find(|l| flags.iter().any(|f| f.path == l.path)) {
        return Err(format!(
            "--limits {name} {}: also given as --limit: give each container path once, in the file or as a flag",
            l.path
        ));
    }
    let mut all = flags;
    all.extend(file);
    if all.len() > MAX_CONTAINER_LIMITS {
        return Err(format!(
            "--limit and --limits {name}: {} limits is too many: at most {MAX_CONTAINER_LIMITS} together",
            all.len()
        ));
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_says_what_the_flag_says() {
        let text = r#"{"limits": [
            {"container": "web", "blk-ops": "100/s", "blk-bytes": "1MiB/s", "blk-ops-burst": 50},
            {"container": "batch/*", "net-tx-frames": "10/100ms", "net-tx-bytes-burst": "4KiB", "net-tx-bytes": "64KiB/s"},
            {"container": "unattributed", "blk-ops": "5/s"},
            {"container": "tenant", "blk-ops": "500/s"},
            {"container": "db", "net-rx-frames": "50/s", "net-rx-bytes": "1MiB/s", "net-rx-frames-burst": 5},
            {"container": "flood", "net-rx-frames": "100/s", "net-rx-drop": "on"},
            {"container": "batch", "cpu": "20%/100ms"},
            {"container": "spin*", "cpu": "5%/1s", "blk-ops": "1/s"}
        ]}"#;
        let got = parse(text, "l.json").unwrap();
        let want: Vec<ContainerLimit> = [
            "web:blk-ops=100/s,blk-bytes=1MiB/s,blk-ops-burst=50",
            "batch/*:net-tx-frames=10/100ms,net-tx-bytes-burst=4KiB,net-tx-bytes=64KiB/s",
            "unattributed:blk-ops=5/s",
            "tenant:blk-ops=500/s",
            "db:net-rx-frames=50/s,net-rx-bytes=1MiB/s,net-rx-frames-burst=5",
            "flood:net-rx-frames=100/s,net-rx-drop=on",
            "batch:cpu=20%/100ms",
            "spin*:cpu=5%/1s,blk-ops=1/s",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        assert_eq!(got, want);
        assert_eq!(parse(r#"{"limits": []}"#, "e").unwrap(), vec![]);
    }

    #[test]
    fn every_mistake_names_the_file_and_what_is_expected() {
        for (text, says) in [
            ("", "EOF while parsing"),
            ("{", "line 1"),
            ("[]", "expected struct LimitsFile"),
            (r#"{"limit": []}"#, "unknown field `limit`"),
            (r#"{"limits": [], "limits": []}"#, "duplicate field"),
            (r#"{"limits": {}}"#, "expected a sequence"),
            (
                r#"{"limits": [{"blk-ops": "1/s"}]}"#,
                "limit 1 names no container",
            ),
            (r#"{"limits": [{"container": "a"}]}"#, "a sets no rate"),
            (
                r#"{"limits": [{"container": "a", "cpu": "20%"}]}"#,
                "cpu=PERCENT%/PERIOD",
            ),
            (r#"{"limits": [{"container": "a", "blk-ops": 5}]}"#, "blk-ops"),
            (
                r#"{"limits": [{"container": "a", "blk-ops": -5}]}"#,
                "a whole number for a burst",
            ),
            (
                r#"{"limits": [{"container": "a", "blk-ops": 1.5}]}"#,
                "a whole number for a burst",
            ),
            (
                r#"{"limits": [{"container": "a", "blk-ops": null}]}"#,
                "a whole number for a burst",
            ),
            (r#"{"limits": [{"container": "a", "blk-ops": "0/s"}]}"#, "blk-ops"),
            (
                r#"{"limits": [{"container": "a", "blk-ops": "1/s", "blk-ops": "2/s"}]}"#,
                "`blk-ops` given twice",
            ),
            (
                r#"{"limits": [{"container": "a", "container": "b", "blk-ops": "2/s"}]}"#,
                "`container` given twice",
            ),
            (
                r#"{"limits": [{"container": "a", "blk-iops": "1/s"}]}"#,
                "unknown key `blk-iops`",
            ),
            (
                r#"{"limits": [{"container": "a", "net-rx-packets": "1/s"}]}"#,
                "unknown key `net-rx-packets`",
            ),
            (
                r#"{"limits": [{"container": "a", "blk-ops": "1/s", "priority": 8}]}"#,
                "priority: `8` is not a whole number from 0 to 7",
            ),
            (
                r#"{"limits": [{"container": "tenant", "blk-ops": "1/s", "share": 2}]}"#,
                "the tenant limit has no priority or share",
            ),
            (
                r#"{"limits": [{"container": "a", "blk-ops-burst": 3}]}"#,
                "blk-ops-burst needs blk-ops",
            ),
            (
                r#"{"limits": [{"container": "", "blk-ops": "1/s"}]}"#,
                "names no container",
            ),
            (
                r#"{"limits": [{"container": "a*b", "blk-ops": "1/s"}]}"#,
                "`*` may only end a path",
            ),
            (
                r#"{"limits": [{"container": "a/**", "blk-ops": "1/s"}]}"#,
                "`*` may only end a path",
            ),
            (
                r#"{"limits": [{"container": "a", "blk-ops": "1/s"}, {"container": "a", "blk-ops": "2/s"}]}"#,
                "a: given twice",
            ),
        ] {
            let e = parse(text, "lim.json").unwrap_err();
            assert!(e.starts_with("--limits lim.json"), "{text}: {e}");
            assert!(e.contains(says), "{text}: {e}");
        }
        // Line and column of the mistake.
        let e = parse(
            "{\"limits\": [\n  {\"container\": \"a\",\n   \"blk-ops\": \"0/s\"}\n]}",
            "f",
        )
        .unwrap_err();
        assert!(e.contains("line 3"), "{e}");
        // Bounds: entries, and keys in one entry.
        let many: Vec<String> = (0..=MAX_CONTAINER_LIMITS)
            .map(|i| format!(r#"{{"container": "c{i}", "blk-ops": "1/s"}}"#))
            .collect();
        let e = parse(&format!(r#"{{"limits": [{}]}}"#, many.join(",")), "f").unwrap_err();
        assert!(e.contains("65 limits is too many"), "{e}");
        // Every key of `--limit` and its burst fit in one entry.
        let all: Vec<String> = (crate::config::LIMIT_KEYS.iter())
            .flat_map(|(k, _)| [format!(r#""{k}": "1/s""#), format!(r#""{k}-burst": 1"#)])
            .collect();
        let l = parse(
            &format!(r#"{{"limits": [{{"container": "a", {}}}]}}"#, all.join(",")),
            "f",
        )
        .unwrap();
        assert_eq!(l[0].buckets().count(), crate::config::LIMIT_KEYS.len());
        let keys: Vec<String> = (0..40).map(|i| format!(r#""k{i}": "1/s""#)).collect();
        let e = parse(&format!(r#"{{"limits": [{{{}}}]}}"#, keys.join(",")), "f").unwrap_err();
        assert!(e.contains("too many keys"), "{e}");
    }

    #[test]
    fn flags_and_file_together_refuse_a_path_given_in_both() {
        let flags: Vec<ContainerLimit> = vec!["web:blk-ops=1/s".parse().unwrap()];
        let file = parse(r#"{"limits": [{"container": "db", "blk-ops": "2/s"}]}"#, "f").unwrap();
        let all = merge(flags.clone(), file, "f").unwrap();
        assert_eq!(
            all.iter().map(|l| l.path.as_str()).collect::<Vec<_>>(),
            ["web", "db"]
        );
        let file = parse(r#"{"limits": [{"container": "web", "blk-ops": "2/s"}]}"#, "f").unwrap();
        let e = merge(flags, file, "f").unwrap_err();
        assert!(e.contains("--limits f web: also given as --limit"), "{e}");
    }

    #[test]
    fn load_reads_a_file_and_names_a_missing_or_huge_one() {
        let dir = std::env::temp_dir().join(format!("rsrc-limits-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ok = dir.join("ok.json");
        std::fs::write(&ok, r#"{"limits": [{"container": "a", "blk-ops": "1/s"}]}"#).unwrap();
        assert_eq!(load(&ok).unwrap().len(), 1);
        let e = load(&dir.join("missing.json")).unwrap_err();
        assert!(e.contains("missing.json: cannot open"), "{e}");
        let huge = dir.join("huge.json");
        std::fs::write(
            &huge,
            vec![b' '; usize::try_from(MAX_LIMITS_FILE_BYTES).unwrap() + 1],
        )
        .unwrap();
        assert!(load(&huge).unwrap_err().contains("larger than"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
