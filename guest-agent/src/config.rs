//! The agent's configuration file (`--config PATH`, JSON): rules that turn
//! cgroups and processes into containers.
//!
//! ```json
//! {
//!   "containers": [
//!     { "cgroup": "/system.slice/*.service" },
//!     { "cgroup": "/kubepods/**/pod*", "name": "pod-{basename}" },
//!     { "process": "postgres*", "name": "postgres" }
//!   ],
//!   "retire_after_intervals": 2
//! }
//! ```
//!
//! - A **cgroup rule** makes one container per cgroup whose path (from the
//!   cgroup v2 root) matches the glob: `*` and `?` stay within one path
//!   component, `**` crosses `/`. The container carries that cgroup. Its name
//!   is the template `name` (default `{basename}`, the last component;
//!   `{path}` is the whole path).
//! - A **process rule** makes one container per distinct name rendered for
//!   the processes whose `comm` matches the glob (`*` matches anything here;
//!   default name `{comm}`). It carries the cgroup of the lowest-pid matching
//!   process, unless that is the root cgroup.
//!
//! Names are sanitized to the tag ABI's 1..=32 bytes of `[A-Za-z0-9._:-]`
//! (other bytes become `_`). A cgroup matched by several rules belongs to
//! the first. A container whose match is gone for `retire_after_intervals`
//! consecutive intervals (default 1) is retired.

use std::collections::BTreeMap;
use std::path::Path;

use accounting::abi::MAX_NAME_LEN;
use accounting::agent::{CgroupInfo, ProcessInfo};
use serde::Deserialize;

/// Longest glob pattern or name template, in bytes.
pub const MAX_PATTERN: usize = 256;
/// Most rules in one file.
pub const MAX_RULES: usize = 256;

/// A configuration the agent cannot use.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read the config file {path}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not the expected JSON.
    #[error("config file {path} is not valid: {msg} (see docs/agent-protocol.md, \"The agent\")")]
    Parse {
        /// The file.
        path: String,
        /// What serde said.
        msg: String,
    },
    /// A rule breaks a rule.
    #[error("container rule {index}: {msg}")]
    Rule {
        /// Its position in `containers`, from 0.
        index: usize,
        /// What is wrong and what was expected.
        msg: String,
    },
}

/// The whole file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Container rules, in priority order.
    #[serde(default)]
    pub containers: Vec<Rule>,
    /// Intervals a container's match may be missing before it is retired.
    #[serde(default = "one")]
    pub retire_after_intervals: u32,
}

fn one() -> u32 {
    1
}

/// One container rule: exactly one of `cgroup` and `process`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Glob over cgroup paths.
    #[serde(default)]
    pub cgroup: Option<String>,
    /// Glob over process `comm`s.
    #[serde(default)]
    pub process: Option<String>,
    /// Name template.
    #[serde(default)]
    pub name: Option<String>,
}

impl Config {
    /// Parses and checks a config text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let c: Config = serde_json::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_owned(),
            msg: e.to_string(),
        })?;
        c.check()?;
        Ok(c)
    }

    /// Reads, parses and checks `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.display().to_string(),
            source: e,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Checks every rule.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.containers.len() > MAX_RULES {
            return Err(ConfigError::Rule {
                index: MAX_RULES,
                msg: format!("at most {MAX_RULES} rules"),
            });
        }
        for (index, r) in self.containers.iter().enumerate() {
            let err = |msg: &str| ConfigError::Rule {
                index,
                msg: msg.to_owned(),
            };
            let (pat, allowed): (&str, &[&str]) = match (&r.cgroup, &r.process) {
                (Some(c), None) => {
                    if !c.starts_with('/') {
                        return Err(err(
                            "a cgroup pattern starts with '/' (paths are from the cgroup root)",
                        ));
                    }
                    (c, &["basename", "path"])
                }
                (None, Some(p)) => (p, &["comm"]),
                _ => return Err(err("give exactly one of \"cgroup\" and \"process\"")),
            };
            if pat.is_empty() || pat.len() > MAX_PATTERN {
                return Err(err(&format!("a pattern is 1..={MAX_PATTERN} bytes")));
            }
            if let Some(t) = &r.name {
                if t.is_empty() || t.len() > MAX_PATTERN {
                    return Err(err(&format!("a name template is 1..={MAX_PATTERN} bytes")));
                }
                check_template(t, allowed).map_err(|m| err(&m))?;
            }
        }
        Ok(())
    }
}

fn check_template(t: &str, allowed: &[&str]) -> Result<(), String> {
    let mut rest = t;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else {
            return Err(format!("unclosed '{{' in name template {t:?}"));
        };
        let key = &rest[open + 1..open + close];
        if !allowed.contains(&key) {
            return Err(format!(
                "unknown placeholder {{{key}}} in {t:?}; this rule allows {allowed:?}"
            ));
        }
        rest = &rest[open + close + 1..];
    }
    Ok(())
}

fn render(t: &str, vars: &[(&str, &str)]) -> String {
    let mut s = t.to_owned();
    for (k, v) in vars {
        s = s.replace(&format!("{{{k}}}"), v);
    }
    s
}

/// Makes any text a valid container name: bytes outside `[A-Za-z0-9._:-]`
/// become `_`, at most 32 bytes, `_` when empty.
pub fn sanitize_name(raw: &str) -> String {
    let mut s: String = raw
        .bytes()
        .take(MAX_NAME_LEN)
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-') {
                char::from(b)
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() {
        s.push('_');
    }
    s
}

/// Glob match. `*` and `?` do not match `/` when `paths` is set; `**`
/// matches anything. Runs in O(pattern × text).
pub fn glob_match(pattern: &str, text: &str, paths: bool) -> bool {
    #[derive(Clone, Copy)]
    enum Tok {
        Lit(u8),
        One,
        Star,
        StarStar,
    }
    let p = pattern.as_bytes();
    let mut toks = Vec::with_capacity(p.len());
    let mut i = 0;
    while i < p.len() {
        match p[i] {
            b'*' if p.get(i + 1) == Some(&b'*') => {
                toks.push(Tok::StarStar);
                i += 2;
            }
            b'*' => {
                toks.push(if paths { Tok::Star } else { Tok::StarStar });
                i += 1;
            }
            b'?' => {
                toks.push(Tok::One);
                i += 1;
            }
            c => {
                toks.push(Tok::Lit(c));
                i += 1;
            }
        }
    }
    let t = text.as_bytes();
    // row[j]: the tokens so far match t[..j].
    let mut row = vec![false; t.len() + 1];
    row[0] = true;
    for tok in toks {
        let mut next = vec![false; t.len() + 1];
        for j in 0..=t.len() {
            next[j] = match tok {
                Tok::Star | Tok::StarStar if row[j] => true,
                Tok::Star => j > 0 && next[j - 1] && t[j - 1] != b'/',
                Tok::StarStar => j > 0 && next[j - 1],
                Tok::One => j > 0 && row[j - 1] && !(paths && t[j - 1] == b'/'),
                Tok::Lit(c) => j > 0 && row[j - 1] && t[j - 1] == c,
            };
        }
        row = next;
    }
    row[t.len()]
}

/// What identifies a rule's container across intervals.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RuleKey {
    /// Cgroup rule `rule`, this cgroup path.
    Cgroup {
        /// Rule index.
        rule: usize,
        /// The cgroup.
        path: String,
    },
    /// Process rule `rule`, this rendered (unsanitized) name.
    Process {
        /// Rule index.
        rule: usize,
        /// The name.
        name: String,
    },
}

/// A container the rules want this interval.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    /// Identity.
    pub key: RuleKey,
    /// Sanitized name (before de-duplication).
    pub name: String,
    /// Cgroup it stands for.
    pub cgroup: Option<String>,
}

/// The containers the rules derive from one snapshot, in rule order.
/// `processes` are expected in ascending pid order.
pub fn desired(config: &Config, cgroups: &[CgroupInfo], processes: &[ProcessInfo]) -> Vec<Desired> {
    let mut out = Vec::new();
    let mut claimed = std::collections::HashSet::new();
    for (rule, r) in config.containers.iter().enumerate() {
        if let Some(pat) = &r.cgroup {
            let tmpl = r.name.as_deref().unwrap_or("{basename}");
            for g in cgroups {
                if !glob_match(pat, &g.path, true) || claimed.contains(g.path.as_str()) {
                    continue;
                }
                claimed.insert(g.path.as_str());
                let base = g
                    .path
                    .rsplit('/')
                    .next()
                    .filter(|b| !b.is_empty())
                    .unwrap_or("root");
                let path = g.path.trim_start_matches('/');
                let name = render(
                    tmpl,
                    &[
                        ("basename", base),
                        ("path", if path.is_empty() { "root" } else { path }),
                    ],
                );
                out.push(Desired {
                    key: RuleKey::Cgroup {
                        rule,
                        path: g.path.clone(),
                    },
                    name: sanitize_name(&name),
                    cgroup: Some(g.path.clone()),
                });
            }
        } else if let Some(pat) = &r.process {
            let tmpl = r.name.as_deref().unwrap_or("{comm}");
            let mut by_name: BTreeMap<String, Option<String>> = BTreeMap::new();
            for p in processes {
                if glob_match(pat, &p.comm, false) {
                    let name = render(tmpl, &[("comm", &p.comm)]);
                    by_name
                        .entry(name)
                        .or_insert_with(|| (p.cgroup != "/").then(|| p.cgroup.clone()));
                }
            }
            for (name, cgroup) in by_name {
                out.push(Desired {
                    name: sanitize_name(&name),
                    key: RuleKey::Process { rule, name },
                    cgroup,
                });
            }
        }
    }
    out
}

/// The processes that `process` rules match, for the slot tagger: each
/// process under the first rule whose pattern matches its comm, as (pid,
/// rule index, the container name the rule renders for it, before
/// sanitizing: the `RuleKey::Process` name).
pub fn process_matches(config: &Config, processes: &[ProcessInfo]) -> Vec<(u32, usize, String)> {
    let rules: Vec<(usize, &str, &str)> = config
        .containers
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            let pat = r.process.as_deref()?;
            Some((i, pat, r.name.as_deref().unwrap_or("{comm}")))
        })
        .collect();
    processes
        .iter()
        .filter_map(|p| {
            let (rule, _, tmpl) = rules.iter().find(|(_, pat, _)| glob_match(pat, &p.comm, false))?;
            Some((p.pid, *rule, render(tmpl, &[("comm", &p.comm)])))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_matches_take_the_first_process_rule_per_process() {
        let c = Config::parse(
            r#"{"containers":[{"cgroup":"/x/*"},{"process":"pg*","name":"db-{comm}"},{"process":"p*"}]}"#,
            "t",
        )
        .unwrap();
        let proc = |pid: u32, comm: &str| ProcessInfo {
            pid,
            ppid: 1,
            comm: comm.into(),
            cgroup: "/".into(),
            usage: Default::default(),
            read_bytes: 0,
            write_bytes: 0,
            rss_bytes: 0,
            threads: Vec::new(),
            threads_omitted: 0,
        };
        let m = process_matches(&c, &[proc(1, "init"), proc(7, "pgbouncer"), proc(9, "python")]);
        assert_eq!(
            m,
            vec![(7, 1, "db-pgbouncer".to_string()), (9, 2, "python".to_string())]
        );
    }

    fn cg(path: &str) -> CgroupInfo {
        CgroupInfo {
            path: path.into(),
            ..CgroupInfo::default()
        }
    }

    fn proc_(pid: u32, comm: &str, cgroup: &str) -> ProcessInfo {
        ProcessInfo {
            pid,
            ppid: 1,
            comm: comm.into(),
            cgroup: cgroup.into(),
            usage: Default::default(),
            read_bytes: 0,
            write_bytes: 0,
            rss_bytes: 0,
            threads: vec![],
            threads_omitted: 0,
        }
    }

    #[test]
    fn glob_star_stays_in_a_component() {
        assert!(glob_match(
            "/system.slice/*.service",
            "/system.slice/web.service",
            true
        ));
        assert!(!glob_match(
            "/system.slice/*.service",
            "/system.slice/a/b.service",
            true
        ));
        assert!(glob_match("/kubepods/**/pod*", "/kubepods/burstable/pod12", true));
        assert!(glob_match("/kubepods/**", "/kubepods/a/b/c", true));
        assert!(!glob_match(
            "/system.slice/*.service",
            "/system.slice/web.socket",
            true
        ));
        assert!(glob_match("/a?c", "/abc", true));
        assert!(!glob_match("/a?c", "/a/c", true));
        assert!(glob_match("kworker*", "kworker/0:1", false));
        assert!(glob_match("*", "", false));
        assert!(!glob_match("", "x", false));
        assert!(glob_match("*a*a*a*a*b", &format!("{}b", "a".repeat(40)), false));
    }

    #[test]
    fn names_are_sanitized() {
        assert_eq!(sanitize_name("user@1000.service"), "user_1000.service");
        assert_eq!(sanitize_name(""), "_");
        assert_eq!(sanitize_name(&"x".repeat(40)).len(), 32);
        assert_eq!(sanitize_name("é"), "__");
        assert!(accounting::abi::valid_name(sanitize_name("a b/c").as_bytes()));
    }

    #[test]
    fn config_parses_and_refuses_mistakes() {
        let c = Config::parse(
            r#"{"containers":[{"cgroup":"/system.slice/*.service"},{"process":"pg*","name":"db-{comm}"}]}"#,
            "t",
        )
        .unwrap();
        assert_eq!(c.containers.len(), 2);
        assert_eq!(c.retire_after_intervals, 1);
        for bad in [
            r#"{"containers":[{"cgroup":"system.slice"}]}"#,
            r#"{"containers":[{"cgroup":"/a","process":"b"}]}"#,
            r#"{"containers":[{}]}"#,
            r#"{"containers":[{"process":"x","name":"{basename}"}]}"#,
            r#"{"containers":[{"cgroup":"/x","name":"{oops"}]}"#,
            r#"{"containers":[{"cgroup":"/x","colour":"red"}]}"#,
            r#"{"containers":[{"process":""}]}"#,
        ] {
            assert!(Config::parse(bad, "t").is_err(), "{bad}");
        }
    }

    #[test]
    fn cgroup_rules_make_one_container_per_match() {
        let c = Config::parse(
            r#"{"containers":[{"cgroup":"/system.slice/*.service"},{"cgroup":"/**","name":"all-{path}"}]}"#,
            "t",
        )
        .unwrap();
        let gs = [
            cg("/"),
            cg("/system.slice"),
            cg("/system.slice/web.service"),
            cg("/user.slice/u@1.service"),
        ];
        let d = desired(&c, &gs, &[]);
        let names: Vec<_> = d.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "web.service",
                "all-root",
                "all-system.slice",
                "all-user.slice_u_1.service"
            ]
        );
        assert_eq!(d[0].cgroup.as_deref(), Some("/system.slice/web.service"));
    }

    #[test]
    fn process_rules_attach_the_lowest_pid_cgroup() {
        let c = Config::parse(
            r#"{"containers":[{"process":"nginx*","name":"nginx"},{"process":"pg"}]}"#,
            "t",
        )
        .unwrap();
        let ps = [
            proc_(10, "nginx", "/web"),
            proc_(11, "nginx: worker", "/web/w"),
            proc_(12, "pg", "/"),
            proc_(13, "bash", "/x"),
        ];
        let d = desired(&c, &[], &ps);
        assert_eq!(d.len(), 2);
        assert_eq!(
            (d[0].name.as_str(), d[0].cgroup.as_deref()),
            ("nginx", Some("/web"))
        );
        assert_eq!((d[1].name.as_str(), d[1].cgroup.as_deref()), ("pg", None));
    }
}
