//! `resourceful flame --api-sock PATH --resource R -o FILE.svg`: fetches a
//! flame graph of a running VM's charges (`GET /v1/flamegraph.svg`) with
//! the minimal client of [`super::client`] and writes it out; `--folded`
//! or `-o -` asks for the folded stacks instead, as text.

use std::io::Write as _;
use std::path::Path;

use anyhow::Context;

use super::client;
use super::flame::Resource;

/// The API target that answers for `resource` (as `--resource` spells it)
/// in folded text or as an SVG; `--resource` names a resource the API knows
/// or the error names the flag and the choices.
pub fn target(resource: &str, folded: bool) -> anyhow::Result<String> {
    let Some(r) = Resource::parse(resource) else {
        let names: Vec<&str> = Resource::ALL.iter().map(|r| r.name()).collect();
        anyhow::bail!("--resource {resource}: expected one of {}", names.join(", "));
    };
    let format = if folded { "folded" } else { "svg" };
    Ok(format!(
        "/v1/flamegraph.svg?resource={}&format={format}",
        r.name()
    ))
}

/// Fetches the graph of `resource` from the VM serving `sock` and writes it
/// to `output` (`-`: standard output). Folded text when `folded` or when
/// `output` is `-`; an SVG otherwise.
pub fn run(sock: &Path, resource: &str, output: &Path, folded: bool) -> anyhow::Result<()> {
    let stdout = output == Path::new("-");
    let target = target(resource, folded || stdout)?;
    let r =
        client::get(sock, &target).context("check --api-sock: is the VM running with --api-sock PATH?")?;
    if r.status != 200 {
        let msg = serde_json::from_str::<serde_json::Value>(&r.body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or(r.body);
        anyhow::bail!("GET {target}: {} {msg}", r.status);
    }
    if stdout {
        let mut out = std::io::stdout().lock();
        out.write_all(r.body.as_bytes())
            .and_then(|()| out.flush())
            .context("cannot write the folded stacks to standard output")?;
    } else {
        std::fs::write(output, r.body.as_bytes())
            .with_context(|| format!("-o {}: cannot write the flame graph there", output.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_name_the_resource_and_format_and_refuse_others() {
        assert_eq!(
            target("exits", false).unwrap(),
            "/v1/flamegraph.svg?resource=exits&format=svg"
        );
        assert_eq!(
            target("host_ns", true).unwrap(),
            "/v1/flamegraph.svg?resource=host_ns&format=folded"
        );
        let e = target("cpu&x=1", false).unwrap_err().to_string();
        assert!(
            e.starts_with("--resource cpu&x=1: expected one of host_ns, exits"),
            "{e}"
        );
    }
}
