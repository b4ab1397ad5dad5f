//! The files besides the config file that hold services' settings: the drop-ins
//! (`conf.d/*.json` beside the config file, each `{"services": {...}}` and nothing
//! else, read in name order) and the sidecars (`services_dir/NAME/service.json`, the
//! keys of one service). Each is judged like the config file (StrictModes as root, a
//! regular file, bounded) and parsed with its errors at `file:line:column`; then each
//! service's layers are merged (`layers::merge`) and validated, every problem charged
//! to the file its key came from.
//!
//! An error in a drop-in is an error of the whole configuration (pushed on `errors`);
//! one in a sidecar concerns its service only (`Sources::broken`: the service keeps its
//! other layers and fails). This module reads these files and nothing else.

use super::layers::{self, Kind, Layer, Origin, Sources};
use super::{
    normalize, parse, parse_as, read_judged, service_paths, valid_service_name, validate_service,
    ServiceConfig, Settings, INVALID_NAME,
};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A sidecar's file name in its service's directory.
pub const SIDECAR: &str = "service.json";

/// The directory of drop-ins, beside the config file.
pub const DROP_INS: &str = "conf.d";

/// Whether a file named `name` in `conf.d` is a drop-in (an editor's hidden swap or
/// temporary file is not).
pub fn is_drop_in(name: &[u8]) -> bool {
    name.ends_with(b".json") && !name.starts_with(b".")
}

/// A service's keys as written.
type Keys = Map<String, Value>;

/// Each service's layers, highest first, in name order. A list, not a map: a map of
/// this type would link a tree's code just for this.
#[derive(Default)]
struct Entries(Vec<(String, Vec<Layer>)>);

impl Entries {
    fn push(&mut self, name: String, layer: Layer) {
        match self.0.binary_search_by(|(n, _)| n.as_str().cmp(&name)) {
            Ok(i) => self.0[i].1.push(layer),
            Err(i) => self.0.insert(i, (name, vec![layer])),
        }
    }
}

/// Every service's entry, layered: the config file's (`path`, whose contents are `text`)
/// over the drop-ins' over the sidecars' in `settings.services_dir`.
pub(super) fn layered(
    path: Option<&Path>,
    text: &str,
    settings: &Settings,
    errors: &mut Vec<String>,
) -> (BTreeMap<String, ServiceConfig>, Sources) {
    let label = path.map_or("(defaults)".into(), |p| p.display().to_string());
    let mut entries = Entries::default();
    let mut sources = Sources::default();
    if let Some(path) = path {
        let origin = Origin {
            kind: Kind::ConfigFile,
            path: path.to_path_buf(),
        };
        for (name, keys) in raw_services(text).0 {
            let layer = Layer {
                origin: origin.clone(),
                keys,
            };
            entries.push(name, layer);
        }
        if let Some(dir) = path.parent() {
            drop_ins(&dir.join(DROP_INS), &mut entries, errors);
        }
    }
    // By insertion: collecting into an ordered set would link a sort just for this.
    for (name, _) in &entries.0 {
        sources.configured.insert(name.clone());
    }
    sidecars(&settings.services_dir, &mut entries, &mut sources);
    let mut services = BTreeMap::new();
    for (name, mut layers) in entries.0 {
        // Named by the file or a drop-in (a sidecar's directory name was checked).
        if !valid_service_name(&name) {
            let file = layers.first().map(|l| l.origin.path.display().to_string());
            let file = file.unwrap_or_default();
            errors.push(format!("{file}: services.{name}: {INVALID_NAME}"));
            continue;
        }
        let svc = settle(&name, &mut layers, settings, &label, &mut sources, errors);
        services.insert(name, svc);
    }
    // A sidecar alone that cannot be read still names a service: it fails, saying why.
    for name in sources.broken.keys() {
        if !services.contains_key(name) {
            services.insert(name.clone(), ServiceConfig::default());
        }
    }
    (services, sources)
}

/// One service's entry from its layers. A problem with a key from the sidecar breaks
/// the sidecar: the entry is made again without it.
fn settle(
    name: &str,
    layers: &mut Vec<Layer>,
    settings: &Settings,
    label: &str,
    sources: &mut Sources,
    errors: &mut Vec<String>,
) -> ServiceConfig {
    loop {
        let merged = layers::merge(layers);
        let mut svc = typed(name, &merged.keys, errors);
        for (key, p) in service_paths(&mut svc) {
            if let (Some(p), Some(o)) = (p.as_mut(), layers::origin_of(&merged.from, key)) {
                *p = normalize(&o.dir().join(&*p));
            }
        }
        let mut problems = Vec::new();
        validate_service(settings, name, &svc, &mut |key, msg| {
            problems.push((key.to_string(), msg))
        });
        let origin_of =
            |key: &str| layers::origin_of(&merged.from, key.split('.').next().unwrap_or(key));
        let sidecar = problems.iter().find_map(|(key, msg)| {
            let o = origin_of(key).filter(|o| o.kind == Kind::Sidecar)?;
            Some(format!("{}: {key}: {msg}", o.path.display()))
        });
        if let Some(why) = sidecar {
            sources.set_broken(name.to_string(), why);
            layers.retain(|l| l.origin.kind != Kind::Sidecar);
            continue;
        }
        for (key, msg) in problems {
            // A key no file set (a check across keys): the config file's problem.
            let file = origin_of(&key).map_or(label.to_string(), |o| o.path.display().to_string());
            errors.push(format!("{file}: services.{name}.{key}: {msg}"));
        }
        sources.origins.push((name.to_string(), merged.from));
        return svc;
    }
}

/// The merged keys as the typed entry. Each layer was parsed already, so this cannot
/// fail on what a user wrote; if it does, the error names the service.
fn typed(name: &str, keys: &Map<String, Value>, errors: &mut Vec<String>) -> ServiceConfig {
    let text = Value::Object(keys.clone()).to_string();
    parse_as::<ServiceConfig>(&text, &format!("services.{name}")).unwrap_or_else(|e| {
        errors.push(format!("services.{name}: {e}"));
        ServiceConfig::default()
    })
}

/// The services of a parsed file's text, each as its keys; and the first top-level
/// key other than `services`, if any.
fn raw_services(text: &str) -> (Vec<(String, Keys)>, Option<String>) {
    let (mut out, mut other) = (Vec::new(), None);
    let Ok(Value::Object(top)) = serde_json::from_str::<Value>(text) else {
        return (out, other);
    };
    for (key, value) in top {
        match value {
            Value::Object(services) if key == "services" => {
                for (name, v) in services {
                    if let Value::Object(keys) = v {
                        out.push((name, keys));
                    }
                }
            }
            _ => {
                other.get_or_insert(key);
            }
        }
    }
    (out, other)
}

/// The drop-ins of `dir`, in name order, added to `entries`. Any problem is the whole
/// configuration's.
fn drop_ins(dir: &Path, entries: &mut Entries, errors: &mut Vec<String>) {
    let list = match std::fs::read_dir(dir) {
        Ok(list) => list,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => return errors.push(format!("{}: cannot read: {e}", dir.display())),
    };
    // Ordered by insertion: a sort would be linked just for this.
    let mut files: Vec<PathBuf> = Vec::new();
    for entry in list.flatten() {
        if is_drop_in(entry.file_name().as_encoded_bytes()) {
            let path = entry.path();
            let at = files.partition_point(|f| f.as_os_str() < path.as_os_str());
            files.insert(at, path);
        }
    }
    // Which drop-in defined each service so far.
    let mut defined: Vec<(String, PathBuf)> = Vec::new();
    for path in files {
        let text = match read_judged(&path, "drop-in") {
            Ok(text) => text,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        // Judged as a config file would be (no second parser is linked for it), then
        // held to `services` alone.
        if let Err(e) = parse(&text) {
            errors.push(format!("{}:{e}", path.display()));
            continue;
        }
        let (services, other) = raw_services(&text);
        if let Some(key) = other {
            errors.push(format!(
                "{}: `{key}`: a drop-in holds only `services`",
                path.display()
            ));
            continue;
        }
        for (name, keys) in services {
            if let Some((_, first)) = defined.iter().find(|(n, _)| *n == name) {
                errors.push(format!(
                    "{}: services.{name}: defined in {} too",
                    path.display(),
                    first.display()
                ));
                continue;
            }
            defined.push((name.clone(), path.clone()));
            let origin = Origin {
                kind: Kind::DropIn,
                path: path.clone(),
            };
            entries.push(name, Layer { origin, keys });
        }
    }
}

/// The sidecars of the service directories in `dir`, added to `entries`; one that
/// cannot be used goes to `broken` with its error instead.
fn sidecars(dir: &Path, entries: &mut Entries, sources: &mut Sources) {
    // A missing or unreadable services_dir is discovery's to report.
    let Ok(list) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in list.flatten() {
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if !valid_service_name(&name) {
            continue;
        }
        let path = entry.path().join(SIDECAR);
        match std::fs::symlink_metadata(&path) {
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => continue,
            _ => {}
        }
        match read_sidecar(&name, &path) {
            Ok(keys) => {
                let origin = Origin {
                    kind: Kind::Sidecar,
                    path,
                };
                entries.push(name, Layer { origin, keys });
            }
            Err(e) => {
                sources.set_broken(name, crate::config::one_line(e));
            }
        }
    }
}

/// A sidecar's keys, judged and parsed as the service's entry in the config file
/// would be.
fn read_sidecar(name: &str, path: &Path) -> Result<Map<String, Value>, String> {
    let text = read_judged(path, "sidecar")?;
    let at = |e: String| format!("{}:{e}", path.display());
    parse_as::<ServiceConfig>(&text, &format!("services.{name}")).map_err(at)?;
    // Parsed already as an object just above.
    match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(keys)) => Ok(keys),
        _ => Ok(Map::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(kind: Kind, path: &str, text: &str) -> Layer {
        let Ok(Value::Object(keys)) = serde_json::from_str::<Value>(text) else {
            panic!("a layer is an object: {text}")
        };
        let path = PathBuf::from(path);
        Layer {
            origin: Origin { kind, path },
            keys,
        }
    }

    fn settled(layers: &mut Vec<Layer>) -> (ServiceConfig, Sources, Vec<String>) {
        let (mut sources, mut errors) = (Sources::default(), Vec::new());
        let s = Settings::default();
        let svc = settle("web", layers, &s, "/etc/o.json", &mut sources, &mut errors);
        (svc, sources, errors)
    }

    #[test]
    fn each_key_comes_from_its_file_and_relative_paths_start_there() {
        let mut layers = vec![
            layer(Kind::ConfigFile, "/etc/o.json", r#"{"args": ["a"]}"#),
            layer(
                Kind::DropIn,
                "/etc/conf.d/10.json",
                r#"{"pid_file": "web.pid"}"#,
            ),
            layer(
                Kind::Sidecar,
                "/srv/web/service.json",
                r#"{"args": ["b"], "data_dir": "data", "stop_signal": "SIGINT"}"#,
            ),
        ];
        let (svc, sources, errors) = settled(&mut layers);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(svc.args, ["a"]);
        assert_eq!(svc.stop_signal, "SIGINT");
        assert_eq!(svc.data_dir, Some(PathBuf::from("/srv/web/data")));
        assert_eq!(svc.pid_file, Some(PathBuf::from("/etc/conf.d/web.pid")));
        let kind = |key| sources.origin("web", key).map(|o| o.kind);
        assert_eq!(kind("args"), Some(Kind::ConfigFile));
        assert_eq!(kind("pid_file"), Some(Kind::DropIn));
        assert_eq!(kind("data_dir"), Some(Kind::Sidecar));
        assert_eq!(kind("enabled"), None);
    }

    #[test]
    fn a_bad_value_from_the_sidecar_breaks_only_the_sidecar() {
        let mut layers = vec![
            layer(Kind::ConfigFile, "/etc/o.json", r#"{"args": ["a"]}"#),
            layer(
                Kind::Sidecar,
                "/srv/web/service.json",
                r#"{"stop_signal": "NOPE"}"#,
            ),
        ];
        let (svc, sources, errors) = settled(&mut layers);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            sources.broken.get("web").map(String::as_str),
            Some("/srv/web/service.json: stop_signal: unknown signal `NOPE`")
        );
        // The other layers are kept, the sidecar's keys are not.
        assert_eq!(svc.args, ["a"]);
        assert_eq!(svc.stop_signal, "SIGTERM");
    }

    #[test]
    fn a_bad_value_from_the_file_or_a_drop_in_is_a_configuration_error_naming_it() {
        let mut layers = vec![
            layer(Kind::DropIn, "/etc/conf.d/10.json", r#"{"watchdog_ms": 0}"#),
            layer(Kind::Sidecar, "/srv/web/service.json", r#"{"args": ["b"]}"#),
        ];
        let (_, sources, errors) = settled(&mut layers);
        assert!(sources.broken.is_empty());
        assert_eq!(
            errors,
            ["/etc/conf.d/10.json: services.web.watchdog_ms: must be at least 1"]
        );
    }

    #[test]
    fn a_drop_ins_services_and_its_other_keys_are_told_apart() {
        let (services, other) = raw_services(r#"{"services": {"a": {"args": []}, "b": {}}}"#);
        let names: Vec<&str> = services.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!((names, other), (vec!["a", "b"], None));
        let (_, other) = raw_services(r#"{"orchestrator": {}, "services": {}}"#);
        assert_eq!(other.as_deref(), Some("orchestrator"));
    }

    #[test]
    fn entries_stay_in_name_order_with_their_layers_highest_first() {
        let mut e = Entries::default();
        e.push("web".into(), layer(Kind::ConfigFile, "/etc/o.json", "{}"));
        e.push("db".into(), layer(Kind::DropIn, "/etc/conf.d/1.json", "{}"));
        e.push(
            "web".into(),
            layer(Kind::Sidecar, "/s/web/service.json", "{}"),
        );
        let names: Vec<&str> = e.0.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["db", "web"]);
        let kinds: Vec<Kind> = e.0[1].1.iter().map(|l| l.origin.kind).collect();
        assert_eq!(kinds, [Kind::ConfigFile, Kind::Sidecar]);
    }
}
