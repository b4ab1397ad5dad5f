//! Where a service's settings come from: the config file, the drop-ins of `conf.d`, the
//! service's own sidecar (`services_dir/NAME/service.json`), and the defaults, merged
//! per top-level key of a service's entry.
//!
//! The invariant, kept by `merge` (a pure function of the layers, tested below): for
//! every key, the value is the one of the highest layer that writes it with a value
//! other than `null`, taken whole (`environment`, `limits`, `health_check` are never
//! merged inside), and its origin is that layer; a key no layer writes is absent, so
//! the default applies. This module reads no file: `config` reads the layers, judges
//! them (StrictModes, size, shape) and hands them here already parsed.

use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

/// The kinds of layer, highest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    ConfigFile,
    DropIn,
    Sidecar,
}

/// The file a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub kind: Kind,
    pub path: PathBuf,
}

impl Origin {
    /// The directory its relative paths start from: the file's own.
    pub fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("/"))
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            Kind::ConfigFile => "config file",
            Kind::DropIn => "drop-in",
            Kind::Sidecar => "sidecar",
        };
        write!(f, "{kind} {}", self.path.display())
    }
}

/// One layer's entry for one service: its keys as written.
#[derive(Debug, Clone, PartialEq)]
pub struct Layer {
    pub origin: Origin,
    pub keys: Map<String, Value>,
}

/// Each key set and the file it came from, in key order. A sorted list, not a map:
/// a map of this type would link a tree's code for a handful of keys.
pub type Origins = Vec<(String, Origin)>;

/// The origin of `key` in `origins`.
pub fn origin_of<'a>(origins: &'a Origins, key: &str) -> Option<&'a Origin> {
    let i = origins
        .binary_search_by(|(k, _)| k.as_str().cmp(key))
        .ok()?;
    Some(&origins[i].1)
}

/// A service's entry as the layers make it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Merged {
    /// The keys set, none of them `null`.
    pub keys: Map<String, Value>,
    /// For each key of `keys`, the layer it came from.
    pub from: Origins,
}

/// Merges `layers`, given highest first, per top-level key (see the module's invariant).
pub fn merge(layers: &[Layer]) -> Merged {
    let mut out = Merged::default();
    for layer in layers {
        for (key, value) in &layer.keys {
            let at = out.from.partition_point(|(k, _)| k < key);
            if value.is_null() || out.from.get(at).is_some_and(|(k, _)| k == key) {
                continue;
            }
            out.keys.insert(key.clone(), value.clone());
            out.from.insert(at, (key.clone(), layer.origin.clone()));
        }
    }
    out
}

/// What the layers tell beyond the merged entries, kept with the configuration for the
/// plan, `check` and reloads.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sources {
    /// Per service, in name order, each key set by a layer and the file it came from.
    pub origins: Vec<(String, Origins)>,
    /// The services the config file or a drop-in names: a sidecar alone does not make
    /// a service configured.
    pub configured: BTreeSet<String>,
    /// Services whose sidecar cannot be used, with the error (`file:line:col: ...`):
    /// their other layers are kept, and the service fails.
    pub broken: BTreeMap<String, String>,
}

impl Sources {
    /// Whether the config file or a drop-in names service `name`.
    pub fn is_configured(&self, name: &str) -> bool {
        self.configured.contains(name)
    }

    /// Why service `name`'s sidecar cannot be used, if it cannot.
    pub fn broken(&self, name: &str) -> Option<&String> {
        self.broken.get(name)
    }

    /// Records that service `name`'s sidecar cannot be used, and why.
    pub fn set_broken(&mut self, name: String, why: String) {
        self.broken.insert(name, why);
    }

    /// The file `key` of service `name` came from, if a layer set it.
    pub fn origin(&self, name: &str, key: &str) -> Option<&Origin> {
        origin_of(self.of(name)?, key)
    }

    /// Where each key of service `name` came from.
    pub fn of(&self, name: &str) -> Option<&Origins> {
        let i = self
            .origins
            .binary_search_by(|(n, _)| n.as_str().cmp(name))
            .ok()?;
        Some(&self.origins[i].1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn layer(kind: Kind, path: &str, keys: Value) -> Layer {
        let Value::Object(keys) = keys else {
            panic!("a layer is an object")
        };
        Layer {
            origin: Origin {
                kind,
                path: PathBuf::from(path),
            },
            keys,
        }
    }

    fn three(file: Value, drop_in: Value, sidecar: Value) -> Merged {
        merge(&[
            layer(Kind::ConfigFile, "/etc/o.json", file),
            layer(Kind::DropIn, "/etc/conf.d/a.json", drop_in),
            layer(Kind::Sidecar, "/srv/s/svc/service.json", sidecar),
        ])
    }

    #[test]
    fn the_highest_layer_wins_per_key() {
        let m = three(
            json!({"args": ["file"]}),
            json!({"args": ["drop"], "stop_signal": "SIGINT"}),
            json!({"args": ["side"], "stop_signal": "SIGHUP", "memory_limit": 64}),
        );
        assert_eq!(m.keys["args"], json!(["file"]));
        assert_eq!(m.keys["stop_signal"], json!("SIGINT"));
        assert_eq!(m.keys["memory_limit"], json!(64));
        let kind = |key| origin_of(&m.from, key).map(|o| o.kind);
        assert_eq!(kind("args"), Some(Kind::ConfigFile));
        assert_eq!(kind("stop_signal"), Some(Kind::DropIn));
        assert_eq!(kind("memory_limit"), Some(Kind::Sidecar));
        assert_eq!(m.from.len(), m.keys.len());
        assert!(m.from.windows(2).all(|w| w[0].0 < w[1].0), "in key order");
    }

    #[test]
    fn objects_are_replaced_whole_never_merged() {
        let m = three(
            json!({"environment": {"A": "1"}}),
            json!({"limits": {"nofile": 10}}),
            json!({"environment": {"B": "2"}, "limits": {"nproc": 5},
                   "health_check": {"type": "tcp", "address": "x:1"}}),
        );
        assert_eq!(m.keys["environment"], json!({"A": "1"}));
        assert_eq!(m.keys["limits"], json!({"nofile": 10}));
        assert_eq!(m.keys["health_check"]["address"], json!("x:1"));
    }

    #[test]
    fn null_counts_as_absent_in_every_layer() {
        let m = three(
            json!({"args": null, "user": null}),
            json!({"args": ["drop"], "nice": null}),
            json!({"stop_signal": null, "nice": 5}),
        );
        assert_eq!(m.keys["args"], json!(["drop"]));
        assert_eq!(
            origin_of(&m.from, "args").map(|o| o.kind),
            Some(Kind::DropIn)
        );
        assert_eq!(
            origin_of(&m.from, "nice").map(|o| o.kind),
            Some(Kind::Sidecar)
        );
        assert!(!m.keys.contains_key("user"));
        assert!(!m.keys.contains_key("stop_signal"));
        assert!(origin_of(&m.from, "stop_signal").is_none());
    }

    #[test]
    fn no_layer_leaves_every_default() {
        assert_eq!(merge(&[]), Merged::default());
        let m = three(json!({}), json!({}), json!({}));
        assert!(m.keys.is_empty() && m.from.is_empty());
    }

    #[test]
    fn an_origin_says_its_kind_and_file_and_where_paths_start() {
        let o = Origin {
            kind: Kind::Sidecar,
            path: PathBuf::from("/srv/s/web/service.json"),
        };
        assert_eq!(o.to_string(), "sidecar /srv/s/web/service.json");
        assert_eq!(o.dir(), Path::new("/srv/s/web"));
    }
}
