//! Which per-container limit a container path falls under
//! (docs/limits-per-container.md): its exact entry, else the longest
//! pattern (`PREFIX*`) whose prefix starts the path.

/// The index in `paths` of the limit of the container at `path`: the entry
/// equal to it, else the entry `PREFIX*` with the longest `PREFIX` that
/// `path` starts with (`web/*` covers `web/api` and `web/api/v2`, not
/// `web`; `*` covers every path, `unattributed` included); `None` if none.
pub fn limit_index(paths: &[String], path: &str) -> Option<usize> {
    if let Some(i) = paths.iter().position(|p| p == path) {
        return Some(i);
    }
    paths
        .iter()
        .enumerate()
        .filter_map(|(i, p)| {
            let prefix = p.strip_suffix('*')?;
            path.starts_with(prefix).then_some((prefix.len(), i))
        })
        .max()
        .map(|(_, i)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_entries_win_then_the_longest_pattern() {
        let paths: Vec<String> = ["web/*", "web/api", "*", "web/api/*", "batch"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        for (path, want) in [
            ("web/api", Some(1)),
            ("web/api/v2", Some(3)),
            ("web/static", Some(0)),
            ("web", Some(2)),
            ("batch", Some(4)),
            ("batch/x", Some(2)),
            ("unattributed", Some(2)),
        ] {
            assert_eq!(limit_index(&paths, path), want, "{path}");
        }
        let no_star = &paths[..2];
        assert_eq!(limit_index(no_star, "web"), None);
        assert_eq!(limit_index(no_star, "web/api/v2"), Some(0));
        assert_eq!(limit_index(&[], "web"), None);
    }
}
