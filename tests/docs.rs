//! The reference in docs/ and the code say the same: every config key, command and
//! metric the code has is documented, and nothing documented is missing from the code.
//!
//! The code's lists are read from the sources themselves (the serde structs whose
//! field names are the config keys, the command table, the metric families), so that
//! nothing has to be compiled into the binary for this test.

use std::collections::BTreeSet;
use std::path::Path;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

fn read(rel: &str) -> String {
    let path = Path::new(REPO).join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The field names of `pub struct NAME { ... }` in `src`, as serde sees them (a
/// `#[serde(rename = "x")]` above a field renames it).
fn struct_fields(src: &str, name: &str) -> Vec<String> {
    let start = format!("pub struct {name} {{");
    let body = src
        .split_once(&start)
        .unwrap_or_else(|| panic!("no `{start}` in the source"))
        .1;
    let body = &body[..body.find("\n}").expect("the struct ends")];
    let mut fields = Vec::new();
    let mut rename = None;
    for line in body.lines().map(str::trim) {
        if let Some(r) = line.split_once("rename = \"") {
            rename = r.1.split('"').next().map(str::to_string);
        } else if let Some(rest) = line.strip_prefix("pub ") {
            if let Some((field, _)) = rest.split_once(':') {
                fields.push(rename.take().unwrap_or_else(|| field.to_string()));
            }
        }
    }
    fields
}

/// The `### `NAME`` headings of `doc`, grouped under the `## ` heading they follow.
fn headings_under(doc: &str, section: &str) -> BTreeSet<String> {
    let mut inside = false;
    let mut out = BTreeSet::new();
    for line in doc.lines() {
        if let Some(h) = line.strip_prefix("## ") {
            inside = h == section;
        } else if let Some(h) = line.strip_prefix("### `") {
            if inside {
                out.insert(h.trim_end_matches('`').to_string());
            }
        }
    }
    out
}

/// What is in one set and not the other, as a readable failure.
fn same(what: &str, code: &BTreeSet<String>, docs: &BTreeSet<String>, page: &str) {
    let undocumented: Vec<&String> = code.difference(docs).collect();
    let stale: Vec<&String> = docs.difference(code).collect();
    assert!(
        undocumented.is_empty() && stale.is_empty(),
        "{what}: in the code but not in {page}: {undocumented:?}; \
         in {page} but not in the code: {stale:?}"
    );
}

#[test]
fn every_config_key_is_in_the_reference_and_no_other() {
    let types = read("src/config/types.rs");
    let doc = read("docs/configuration.md");
    let nested = |parent: &str, ty: &str| -> Vec<String> {
        struct_fields(&types, ty)
            .into_iter()
            .map(|f| format!("{parent}.{f}"))
            .collect()
    };
    let forward = read("src/config/forward.rs");
    let orchestrator: BTreeSet<String> = struct_fields(&types, "Settings")
        .into_iter()
        .chain(nested("watchdog", "Watchdog"))
        .chain(
            forward
                .split_once("pub const KEYS")
                .and_then(|(_, r)| r.split_once("];"))
                .map_or("", |(keys, _)| keys)
                .split('"')
                .skip(1)
                .step_by(2)
                .map(|f| format!("log_forward.{f}")),
        )
        .collect();
    let services: BTreeSet<String> = struct_fields(&types, "ServiceConfig")
        .into_iter()
        .chain(nested("limits", "Limits"))
        .chain(nested("health_check", "HealthCheck"))
        .chain(nested("sockets", "SocketConfig"))
        .collect();
    assert!(orchestrator.contains("services_dir") && services.contains("health_check.type"));
    let page = "docs/configuration.md";
    same(
        "orchestrator keys",
        &orchestrator,
        &headings_under(&doc, "The orchestrator section"),
        page,
    );
    same(
        "service keys",
        &services,
        &headings_under(&doc, "The services section"),
        page,
    );
    // Every key of either section says its default and what a reload does with it
    // (a nested key is covered by its parent's entry).
    for entry in doc.split("\n### `").skip(1) {
        let (key, text) = entry.split_once('`').unwrap_or((entry, ""));
        let text = text.split("\n## ").next().unwrap_or("");
        if !key.contains('.') {
            assert!(text.contains("default"), "{page}: `{key}` has no default");
            assert!(
                text.contains("On reload"),
                "{page}: `{key}` says nothing of reload"
            );
        }
    }
}

#[test]
fn every_command_is_in_the_reference_and_no_other() {
    let cli = read("src/cli/mod.rs");
    let table = cli
        .split_once("pub const COMMANDS: &[&str] = &[")
        .expect("the command table")
        .1;
    let table = &table[..table.find("];").expect("the table ends")];
    let code: BTreeSet<String> = table
        .split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect();
    assert!(code.contains("run") && code.contains("upgrade-self"));
    let docs = headings_under(&read("docs/cli.md"), "Commands");
    same("commands", &code, &docs, "docs/cli.md");
}

/// Every flag the parser takes, as the completion scripts list them (for every command,
/// and per command), is in docs/cli.md: the global ones in the options section, the
/// others in their command's entry.
#[test]
fn every_flag_is_in_the_commands_reference() {
    let src = read("src/cli/completion.rs");
    let doc = read("docs/cli.md");
    let quoted = |text: &str| -> Vec<String> {
        text.split('"')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect()
    };
    let global = src
        .split_once("const GLOBAL: &[&str] = &[")
        .expect("the global flags")
        .1;
    let global = quoted(&global[..global.find("];").expect("the list ends")]);
    let options = doc
        .split_once("\n## Options for every command\n")
        .expect("an options section")
        .1;
    let options = &options[..options.find("\n## ").unwrap_or(options.len())];
    for flag in &global {
        assert!(
            options.contains(&format!("`{flag}")),
            "docs/cli.md: no `{flag}` in the options"
        );
    }
    let table = src
        .split_once("pub const FLAGS: &[(&str, &[&str])] = &[")
        .expect("the per-command flags")
        .1;
    let table = &table[..table.find("\n];").expect("the table ends")];
    let mut seen = 0;
    for entry in table.split("\n    (").skip(1) {
        let words = quoted(entry);
        let Some((command, flags)) = words.split_first() else {
            continue;
        };
        let start = format!("\n### `{command}`\n");
        let section = doc
            .split_once(&start)
            .unwrap_or_else(|| panic!("docs/cli.md: no entry for `{command}`"))
            .1;
        let section = &section[..section.find("\n### ").unwrap_or(section.len())];
        for flag in flags {
            assert!(
                section.contains(&format!("`{flag}")) || section.contains(&format!("[{flag}")),
                "docs/cli.md: `{command}` does not mention {flag}"
            );
            seen += 1;
        }
    }
    assert!(
        seen >= 10,
        "only {seen} flags found in the completion table"
    );
}

/// Every `orchestrator_...` name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    text.match_indices("orchestrator_")
        .filter(|(i, _)| {
            // A name, not the end of a longer word.
            !text[..*i]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        })
        .map(|(i, _)| {
            text[i..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect::<String>()
        })
        .collect()
}

#[test]
fn every_metric_is_in_the_reference_and_no_other() {
    let src = read("src/control/metrics.rs");
    let src = src.split("#[cfg(test)]").next().unwrap_or("");
    let code = metric_names(src);
    assert!(code.contains("orchestrator_service_up"), "{code:?}");
    let page = "docs/status-and-metrics.md";
    let doc = read(page);
    let metrics = doc
        .split_once("\n## Metrics\n")
        .expect("a Metrics section")
        .1;
    same("metrics", &code, &metric_names(metrics), page);
    // No other page names a metric that does not exist.
    for entry in std::fs::read_dir(Path::new(REPO).join("docs")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let unknown: Vec<String> = metric_names(&text).difference(&code).cloned().collect();
        assert!(
            unknown.is_empty(),
            "{}: no such metric: {unknown:?}",
            path.display()
        );
    }
}

/// Every field of the control protocol's messages is in the status reference (or, for
/// the envelope of a reply, in the control protocol's).
#[test]
fn every_status_field_is_in_the_reference() {
    let src = read("src/common/protocol.rs");
    let code = src.split("#[cfg(test)]").next().unwrap_or("");
    let mut fields = BTreeSet::new();
    // The fields of every struct that derives Serialize, but those never written.
    let (mut on_wire, mut skipped) = (false, false);
    for line in code.lines().map(str::trim) {
        if line.starts_with("#[derive(") {
            on_wire = line.contains("Serialize");
        } else if line.starts_with("#[serde(skip)]") {
            skipped = true;
        } else if let Some(field) = line.strip_prefix("pub ").and_then(|l| l.split_once(':')) {
            let name = field.0;
            if on_wire && !skipped && name.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                fields.insert(name.to_string());
            }
            skipped = false;
        }
    }
    assert!(
        fields.contains("last_exit_code") && fields.contains("rss_bytes"),
        "{fields:?}"
    );
    let docs = read("docs/status-and-metrics.md") + &read("docs/control-protocol.md");
    let missing: Vec<&String> = fields
        .iter()
        .filter(|f| !docs.contains(&format!("`{f}`")) && !docs.contains(&format!("\"{f}\"")))
        .collect();
    assert!(
        missing.is_empty(),
        "status fields not in the reference: {missing:?}"
    );
}
